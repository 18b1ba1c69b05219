"""``BackboneRegistry``: every configured backbone, and the one way in for the rest of the service.

The app loads it, the routes and ``/v1/models`` ask it, the pipeline gets raw rewards from it; none
of them touches a backend or a batcher. ``raw_rewards`` splits a request's models by backbone, runs
the backbones side by side and puts their columns back in the order asked for.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backends import build_backend
from ..config import AnyBackboneConfig, Settings
from ..errors import LoadFailed, NotReady, TooManyModels, UnknownModel
from ..health import ForwardHealth
from ..kinds import KINDS
from ..metrics import Metrics
from .backbone import Backbone, BackboneContext, BackendFactory, ScoreInput, ServedModel

log = logging.getLogger("rewardserve")


def build_backbone(name: str, cfg: AnyBackboneConfig, ctx: BackboneContext) -> Backbone:
    """The backbone of ``cfg.kind``, built by its module's ``build`` (``kinds.KINDS``)."""
    if cfg.kind not in KINDS:
        raise ValueError(f"unknown backbone kind {cfg.kind!r}; known: {', '.join(KINDS)}")
    backbone: Backbone = importlib.import_module(KINDS[cfg.kind]).build(name, cfg, ctx)
    return backbone


@dataclass
class RawRewards:
    """Raw rewards of one request (items × models, in the order asked for), truncation flags, per-item
    warnings, tokens read, and ``timing``: seconds that partition the request's time in the backbones
    (never overlapping): ``encode`` (start → the last backbone's items queued), ``queue`` (→ the first
    forward starts, 0 if one already has), ``forward`` (→ the last forward ends)."""

    raw: np.ndarray
    truncated: np.ndarray
    warnings: list[list[str]]
    tokens: int
    timing: dict[str, float]


class BackboneRegistry:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        health: ForwardHealth | None = None,
        backend_factory: BackendFactory = build_backend,
    ):
        self.settings = settings
        self.context = BackboneContext(settings, metrics, health or ForwardHealth(), backend_factory)
        self.backbones: dict[str, Backbone] = {}
        self.models: dict[str, ServedModel] = {}
        self.loaded = False  # every backbone loaded and warmed up: scoring works
        self.load_error: str | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    async def load(self, names: Iterable[str] | None = None, warmup: bool = True) -> None:
        """Load (and warm up) backbones ``names`` (default: all); a failure is kept in ``load_error``
        (``check_ready`` reports it) and raised."""
        try:
            for name in names if names is not None else self.settings.backbones:
                backbone = build_backbone(name, self.settings.backbones[name], self.context)
                await backbone.load()
                if warmup:
                    await backbone.warmup()
                self.add(backbone)
                self.context.metrics.backbone_loaded(name, list(backbone.models))  # every series has a sample
                log.info("backbone %s loaded: models %s", name, ", ".join(backbone.models))
            self.loaded = True
            log.info("ready: %d models", len(self.models))
        except Exception as e:
            self.load_error = f"loading models failed: {type(e).__name__}: {e}"
            raise

    def add(self, backbone: Backbone) -> None:
        self.backbones[backbone.name] = backbone
        self.models.update(backbone.models)

    def check_ready(self) -> None:
        """``NotReady`` while backbones load, ``LoadFailed`` once loading failed."""
        if self.load_error:
            raise LoadFailed(f"the service is not ready: {self.load_error}")
        if not self.loaded:
            raise NotReady("the service is not ready (models are loading)")

    async def recheck(self) -> None:
        """One check item through each backbone that the health monitor reports failing."""
        for name in self.context.health.failing_backbones():
            backbone = self.backbones.get(name)
            if backbone is None:
                continue
            try:
                await backbone.recheck()
                log.warning("backbone %s: a check forward succeeded; ready again", name)
            except Exception as e:
                log.warning("backbone %s: the check forward failed too: %s: %s", name, type(e).__name__, e)

    async def stop(self, drain_timeout: float = 30.0) -> None:
        await asyncio.gather(*(b.stop(drain_timeout) for b in self.backbones.values()))

    # -- requests -----------------------------------------------------------------------------------
    def select(self, requested: Sequence[str] | None) -> list[str]:
        """The models a request names (default: every one), each once; ``UnknownModel`` / ``TooManyModels``."""
        names = list(dict.fromkeys(requested)) if requested else list(self.models)
        limit = self.settings.limits.max_models_per_request
        if len(names) > limit:
            raise TooManyModels(f"{len(names)} models requested; the limit (max_models_per_request) is {limit}")
        unknown = [m for m in names if m not in self.models]
        if unknown:
            raise UnknownModel(
                f"unknown model {unknown[0]!r}; served models: {', '.join(self.models) or '(none loaded)'}"
            )
        return names

    async def raw_rewards(self, items: Sequence[ScoreInput], models: Sequence[str]) -> RawRewards:
        """Raw rewards of ``items`` for ``models`` (served ones, see ``select``)."""
        by_backbone: dict[str, list[int]] = {}
        for j, m in enumerate(models):
            by_backbone.setdefault(self.models[m].backbone, []).append(j)
        for b, cols in by_backbone.items():  # e.g. a missing label: 422 before any forward runs
            self.backbones[b].check_inputs(items, [models[j] for j in cols])
        t0 = time.perf_counter()
        tasks = [
            asyncio.ensure_future(self.backbones[b].raw_rewards(items, [models[j] for j in cols]))
            for b, cols in by_backbone.items()
        ]
        try:
            answers = await asyncio.gather(*tasks)
        finally:
            for task in tasks:  # one backbone failed: the others' items leave their queues too
                task.cancel()
        raw = np.zeros((len(items), len(models)))
        truncated = np.zeros((len(items), len(models)), dtype=bool)
        warnings: list[list[str]] = [[] for _ in items]
        for cols, a in zip(by_backbone.values(), answers):
            raw[:, cols], truncated[:, cols] = a.raw, a.truncated
            for w, more in zip(warnings, a.warnings or ()):
                w.extend(more)
        for m in models:
            self.context.metrics.items_scored.labels(m).inc(len(items))
        return RawRewards(raw, truncated, warnings, sum(a.tokens for a in answers), _timing(t0, answers))

    # -- description --------------------------------------------------------------------------------
    def describe_models(self) -> list[dict[str, Any]]:
        return [m.describe() for m in self.models.values()]

    def describe_backbones(self) -> dict[str, dict[str, Any]]:
        return {name: b.describe() for name, b in self.backbones.items()}


def _timing(t0: float, answers: Sequence[Any]) -> dict[str, float]:
    starts = [a.started for a in answers if a.started is not None]
    ends = [a.ended for a in answers if a.ended is not None]
    enc_end = max((a.encoded for a in answers), default=t0)
    if not starts:
        return {"encode": max(0.0, enc_end - t0), "queue": 0.0, "forward": 0.0}
    fwd_start = max(min(starts), enc_end)  # a forward that ran during a later encode counts as encode
    return {
        "encode": max(0.0, enc_end - t0),
        "queue": max(0.0, min(starts) - enc_end),
        "forward": max(0.0, max(ends) - fwd_start),
    }
