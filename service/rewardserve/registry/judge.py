"""Backbones of kind ``judge``: a causal LM asked a yes/no question per model (``backends/judge.py``),
behind a batcher like any network: ``ModelBackbone`` with the judge's backend factory. raw =
log P(Yes) − log P(No); with reference 0 the ``lsc`` transform gives u = log P(Yes)."""

from __future__ import annotations

from typing import Any

from ..backends.base import Backend
from ..config import JudgeBackboneConfig, Settings
from .backbone import Backbone, BackboneContext
from .model import ModelBackbone


def judge_backend(name: str, cfg: Any, settings: Settings) -> Backend:
    from ..backends.judge import JudgeBackend  # torch and transformers: only when a judge is configured

    if not isinstance(cfg, JudgeBackboneConfig):
        raise TypeError(f"backbone {name!r}: a judge needs a judge section, got {type(cfg).__name__}")
    return JudgeBackend.from_config(name, cfg, settings)


def build(name: str, cfg: Any, ctx: BackboneContext) -> Backbone:
    return ModelBackbone(name, cfg, ctx, factory=judge_backend)
