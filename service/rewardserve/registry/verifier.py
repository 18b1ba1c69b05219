"""Backbones of kind ``verifier``: rule-based checks (``verifiers/``) run in a process pool.

Each configured check is a model whose ``raw`` is its score in [0, 1] and whose transform is
``check``: u = log(ε + (1 − ε)·raw), reference-free. A check that times out, raises or crashes its
worker scores 0 with a warning naming the model and the reason (never a 500). An item without the
label a check needs is a ``MissingLabel`` (422) naming the item and the model, or, under
``missing_label: skip``, a NaN raw reward: the pipeline leaves the model out of that item's aggregate.
Labels reach the worker processes only; warnings have them redacted (``verifiers/worker.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..combine import Transform
from ..errors import MissingLabel
from ..verifiers.config import VerifierBackboneConfig
from ..verifiers.engine import CheckItem, VerifierEngine
from .backbone import Backbone, BackboneContext, RawScores, ScoreInput, ServedModel

_PROBE = CheckItem("\\boxed{2}", "2")  # one cheap item for warmup and recheck


class VerifierBackbone(Backbone):
    def __init__(self, name: str, cfg: VerifierBackboneConfig, ctx: BackboneContext):
        self.name, self.kind, self.cfg, self.ctx = name, "verifier", cfg, ctx
        self.models: dict[str, ServedModel] = {}
        self._engine: VerifierEngine | None = None

    @property
    def engine(self) -> VerifierEngine:
        if self._engine is None:
            raise RuntimeError(f"backbone {self.name!r} is not loaded")
        return self._engine

    async def load(self) -> None:
        engine = VerifierEngine.from_config(self.cfg, metrics=self.ctx.metrics)
        await asyncio.to_thread(engine.start)  # the workers import math-verify and the user functions
        self._engine = engine
        described = engine.describe()
        for m, c in self.cfg.models.items():
            spec = json.dumps([c.verifier, c.options(), c.epsilon], sort_keys=True, default=str)
            self.models[m] = ServedModel(
                m,
                self.name,
                "verifier",
                f"{c.verifier}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}",
                Transform("check", c.epsilon),
                details={"source": c.verifier, **{k: v for k, v in described[m].items() if k != "kind"}},
            )

    async def _probe(self) -> None:
        m = next(iter(self.models))
        item = _PROBE if self.cfg.models[m].label_required else CheckItem("ok")
        await self.engine.score([item], [m])

    async def warmup(self) -> None:
        await self._probe()

    async def recheck(self) -> None:
        with self.ctx.health.watch(self.name):
            await self._probe()

    def check_inputs(self, items: Sequence[ScoreInput], models: Sequence[str]) -> None:
        for m in models:
            c = self.cfg.models[m]
            if not c.label_required or c.missing_label == "skip":
                continue
            for i, it in enumerate(items):
                if it.label is None:
                    raise MissingLabel(
                        f"items[{i}] has no 'label', which model {m!r} ({c.verifier} check) needs; send the "
                        "ground truth as the item's label, or configure the model with missing_label: skip"
                    )

    async def raw_rewards(self, items: Sequence[ScoreInput], models: Sequence[str]) -> RawScores:
        self.check_inputs(items, models)
        checks = [CheckItem(it.response, it.label, it.prompt) for it in items]
        t0 = time.perf_counter()
        results = await self.engine.score(checks, models)
        t1 = time.perf_counter()
        raw = np.empty((len(items), len(models)))
        warnings: list[list[str]] = [[] for _ in items]
        for j, m in enumerate(models):
            for i, r in enumerate(results[m]):
                raw[i, j] = math.nan if r.score is None else r.score  # NaN: skipped (left out of the aggregate)
                if r.warning:
                    warnings[i].append(r.warning)
        return RawScores(raw, np.zeros(raw.shape, dtype=bool), warnings, encoded=t0, started=t0, ended=t1)

    def describe(self) -> dict[str, Any]:
        e = self.engine
        return {"kind": "verifier", "workers": e.workers, "timeout_s": e.timeout_s}

    async def stop(self, drain_timeout: float = 30.0) -> None:
        if self._engine is not None:
            await asyncio.to_thread(self._engine.stop)


def build(name: str, cfg: Any, ctx: BackboneContext) -> Backbone:
    if not isinstance(cfg, VerifierBackboneConfig):
        raise TypeError(f"backbone {name!r}: a verifier needs a verifier section, got {type(cfg).__name__}")
    return VerifierBackbone(name, cfg, ctx)
