"""Fakes injected at the registry: a backend whose raw rewards are a known function of the response,
and a reference-free check backbone that reads each item's label. No network, no model."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rewardserve.backends.base import Backend, Encoded, ModelInfo
from rewardserve.combine import Transform
from rewardserve.config import BackboneConfig, Settings
from rewardserve.registry import Backbone, BackboneContext, RawScores, ScoreInput, ServedModel

FAKE_KIND_MODULE = __name__  # kinds.KINDS entry of the check kind in tests


def fake_raw(response: str, column: int) -> float:
    """The fake backend's raw reward of model ``column`` for ``response``."""
    return (column + 1) * len(response) / 10.0


class FakeBackend(Backend):
    """A 'network' that scores model j as (j + 1) × response characters / 10; records its forwards."""

    def __init__(self, name: str, models: list[str], max_length: int = 64):
        self.name, self._models, self.max_length = name, models, max_length
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.forwards: list[int] = []  # batch sizes
        self.fail = False

    @property
    def model_names(self) -> list[str]:
        return self._models

    def model_info(self) -> dict[str, ModelInfo]:
        return {m: ModelInfo(m, "fake", "fake://" + m, "rev-1") for m in self._models}

    def encode(self, prompt: Any, response: str) -> Encoded:
        ids = [ord(c) for c in response][: self.max_length] or [0]
        return Encoded(ids, truncated=len(response) > self.max_length, response_chars=len(response))

    def forward(self, batch: list[Encoded]) -> np.ndarray:
        if self.fail:
            raise RuntimeError("injected fault")
        self.forwards.append(len(batch))
        chars = np.array([e.response_chars for e in batch], dtype=np.float64)
        return np.stack([(j + 1) * chars / 10.0 for j in range(len(self._models))], axis=1)


def fake_factory(name: str, cfg: BackboneConfig, settings: Settings) -> Backend:
    return FakeBackend(name, list(cfg.models))


class CheckBackbone(Backbone):
    """A reference-free check: 1 when the response equals the item's label, else 0; an item without a
    label 'times out': score 0 and a warning (what a verifier does on a timeout)."""

    def __init__(self, name: str, cfg: BackboneConfig, ctx: BackboneContext):
        self.name, self.kind, self.cfg = name, cfg.kind, cfg
        self.models: dict[str, ServedModel] = {}
        self.seen_labels: list[object] = []

    async def load(self) -> None:
        for m in self.cfg.models:
            self.models[m] = ServedModel(m, self.name, "check", "check-1", Transform("check", 0.01))

    async def warmup(self) -> None:
        pass

    async def raw_rewards(self, items: Sequence[ScoreInput], models: Sequence[str]) -> RawScores:
        await asyncio.sleep(0)
        self.seen_labels.extend(it.label for it in items)
        scores = [1.0 if it.label is not None and it.response == str(it.label) else 0.0 for it in items]
        warnings = [[] if it.label is not None else ["check timed out: scored 0"] for it in items]
        raw = np.repeat(np.array(scores)[:, None], len(models), axis=1)
        return RawScores(raw, np.zeros_like(raw, dtype=bool), warnings)

    async def recheck(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"checks": len(self.models)}

    async def stop(self, drain_timeout: float = 30.0) -> None:
        pass


def build(name: str, cfg: BackboneConfig, ctx: BackboneContext) -> Backbone:
    return CheckBackbone(name, cfg, ctx)
