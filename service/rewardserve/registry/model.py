"""Backbones of kind ``encoder_head`` and ``sequence_classifier``: a network (``backends/``) behind
a batcher. Items are encoded (tokenized) here, queued in the batcher, and run in its forwards; the
batcher knows the network only as a ``ForwardModel`` (``BackendForward``). Any kind that is a
``Backend`` behind a batcher (a generative judge: raw = log P(Yes) − log P(No)) is this class with
its own ``factory``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .. import prompt_formats
from ..backends.base import Backend, Encoded, intraop_threads
from ..backends.cost import TokenCount
from ..batcher import Batcher, PrefixCost
from ..combine import Transform
from ..config import BackboneConfig, JudgeBackboneConfig
from .backbone import Backbone, BackboneContext, BackendFactory, RawScores, ScoreInput, ServedModel

_INLINE_ENCODE_MAX = 8  # encode this many items on the event loop; more go to a thread


class BackendForward:
    """A backend as the batcher's ``ForwardModel``."""

    def __init__(self, backend: Backend):
        self.backend = backend

    def forward(self, batch: Sequence[Encoded], threads: int | None) -> np.ndarray:
        if threads is not None:
            intraop_threads(threads)
        return self.backend.forward(list(batch))

    def batch_width(self, batch: Sequence[Encoded]) -> int:
        return self.backend.batch_width(list(batch))

    def prefix_cost(self) -> PrefixCost | None:
        return TokenCount(self.backend.cost_model) if self.backend.shares_prefix else None

    def plain_cost(self, n: int, width: int) -> int:
        cost = self.backend.cost_model
        return n * width if cost is None else int(cost.plain(n, width))


def _encode_all(backend: Backend, items: Sequence[ScoreInput]) -> list[Encoded]:
    return [backend.encode(it.prompt, it.response) for it in items]


class ModelBackbone(Backbone):
    def __init__(
        self,
        name: str,
        cfg: BackboneConfig | JudgeBackboneConfig,
        ctx: BackboneContext,
        factory: BackendFactory | None = None,
    ):
        self.name, self.kind, self.cfg, self.ctx = name, cfg.kind, cfg, ctx
        self.factory = factory or ctx.backend_factory  # builds the Backend from the config section
        self.models: dict[str, ServedModel] = {}
        self._backend: Backend | None = None
        self._batcher: Batcher[Encoded] | None = None
        self._columns: dict[str, int] = {}

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            raise RuntimeError(f"backbone {self.name!r} is not loaded")
        return self._backend

    @property
    def batcher(self) -> Batcher[Encoded]:
        if self._batcher is None:
            raise RuntimeError(f"backbone {self.name!r} is not loaded")
        return self._batcher

    async def load(self) -> None:
        settings, cfg = self.ctx.settings, self.cfg
        backend = self._backend = await asyncio.to_thread(self.factory, self.name, cfg, settings)
        b = cfg.batching or settings.batching
        cpu_threads = torch.get_num_threads() if backend.device.type == "cpu" else None
        self._batcher = Batcher(
            self.name,
            BackendForward(backend),
            max_batch_tokens=b.batch_tokens_for(cfg.device),
            max_wait_ms=b.max_wait_ms,
            max_queued_tokens=b.queued_tokens_for(cfg.device),
            sort_by_length=b.sort_by_length,
            max_padding_ratio=b.padding_ratio_for(cfg.device),
            forward_workers=b.workers_for(cfg.device, cpu_threads or 1),
            cpu_threads=cpu_threads,
            metrics=self.ctx.metrics,
            health=self.ctx.health,
            models=backend.model_names,
        )
        self._batcher.start()
        info = backend.model_info()
        runtime = {
            "device": str(backend.device),
            "dtype": str(backend.dtype).replace("torch.", ""),
            "max_length": backend.max_length,
        }
        for col, m in enumerate(backend.model_names):
            mc, mi = cfg.models[m], info[m]
            self._columns[m] = col
            self.models[m] = ServedModel(
                m,
                self.name,
                mi.kind,
                mi.revision,
                Transform(mc.transform),
                mc.default_reference,
                mc.missing_reference,
                {"source": mi.source, **runtime, **mi.extra},
                log_odds=mi.kind == "judge",
            )

    async def warmup(self) -> None:
        await asyncio.to_thread(self.backend.warmup)

    async def recheck(self) -> None:
        with self.ctx.health.watch(self.name):
            await asyncio.to_thread(self.backend.warmup)

    async def raw_rewards(self, items: Sequence[ScoreInput], models: Sequence[str]) -> RawScores:
        backend, batcher = self.backend, self.batcher
        if len(items) <= _INLINE_ENCODE_MAX and prompt_formats.is_small(
            [it.prompt for it in items], [it.response for it in items]
        ):
            encs = _encode_all(backend, items)
        else:
            encs = await asyncio.to_thread(_encode_all, backend, items)
        encoded = time.perf_counter()
        futures = batcher.submit(encs)
        try:
            scored = await asyncio.gather(*futures)
        finally:
            for f in futures:  # on error or client disconnect: nothing left queued for this request
                if not f.done():
                    f.cancel()
        block = np.stack([x.row for x in scored])
        raw = block[:, [self._columns[m] for m in models]]
        truncated = np.repeat(np.array([e.truncated for e in encs], dtype=bool)[:, None], len(models), axis=1)
        return RawScores(
            raw,
            truncated,
            tokens=sum(e.length for e in encs),
            encoded=encoded,
            started=min(x.forward_start for x in scored),
            ended=max(x.forward_end for x in scored),
        )

    def describe(self) -> dict[str, Any]:
        b = self.batcher
        return {
            "forward_workers": b.forward_workers,
            "threads_alone": b.threads[0] if b.threads else None,
            "threads_shared": b.threads[1] if b.threads else None,
        }

    async def stop(self, drain_timeout: float = 30.0) -> None:
        if self._batcher is not None:
            await self._batcher.stop(drain_timeout)


def build(name: str, cfg: BackboneConfig, ctx: BackboneContext) -> Backbone:
    return ModelBackbone(name, cfg, ctx)
