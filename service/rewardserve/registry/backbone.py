"""The backbone protocol: what every kind of reward (``kinds.py``) implements for the registry.

A ``Backbone`` is one configured section of ``backbones:`` with what serves it (a network and its
batcher, a process pool of checks, …) and the models it computes. The registry calls ``load`` then
``warmup`` once, ``raw_rewards`` per request, ``recheck`` while the health monitor reports it failing,
``describe`` for ``/v1/models`` and ``stop`` at shutdown. Each model it serves says how its raw reward
becomes log P(good) (``ServedModel.transform``), so the pipeline never asks which kind it is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from rewardclient.protocol import Prompt

from ..backends.base import Backend
from ..combine import Transform
from ..config import Settings
from ..health import ForwardHealth
from ..metrics import Metrics
from ..references.resolver import REAL_SOURCES, ReferenceRule

BackendFactory = Callable[[str, Any, Settings], Backend]  # (name, its config section, settings) → Backend


@dataclass(frozen=True, slots=True)
class ScoreInput:
    """One item as every backbone reads it: the normalised prompt and response, and the item's
    ``label`` (ground truth, any JSON value; checks read it, others ignore it; never logged)."""

    prompt: Prompt
    response: str
    label: object = field(default=None, repr=False)


@dataclass(frozen=True)
class ServedModel:
    """A model a backbone serves: what the pipeline and ``/v1/models`` need to know of it."""

    name: str
    backbone: str
    kind: str
    revision: str
    transform: Transform
    default_reference: float = 0.0
    missing_reference: Literal["default", "error"] = "default"
    details: dict[str, Any] = field(default_factory=dict)  # more for /v1/models: source, device, …
    # raw is the log-odds of a real probability (a judge: log P(Yes) − log P(No)), so against the
    # config default reference 0 its transform is a real log-probability (p_all_good may use it)
    log_odds: bool = False

    def real_reference(self, source: str, value: float) -> bool:
        """Whether this model's u, with a reference from ``source`` of ``value``, is a real log P(good)."""
        return source in REAL_SOURCES or (self.log_odds and source == "config_default" and value == 0.0)

    def reference_rule(self) -> ReferenceRule:
        t = self.transform.kind
        return ReferenceRule(
            self.name, self.revision, self.default_reference, self.missing_reference, "none" if t == "check" else t
        )

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "backbone": self.backbone}
        out["needs"] = self.details.get("needs", [])  # what each item must carry: ["label"] for most checks
        out.update(source=self.details.get("source"), revision=self.revision, transform=self.transform.kind)
        out.update(default_reference=self.default_reference, missing_reference=self.missing_reference)
        return {**out, **{k: v for k, v in self.details.items() if k not in out}}


@dataclass
class RawScores:
    """A backbone's answer to one request: ``raw`` and ``truncated`` (items × the models asked for,
    in that order), per-item ``warnings`` (e.g. a check that timed out and scored 0) or None, the
    tokens it read, and when (``time.perf_counter``) its items were encoded and its first forward
    started and its last ended (None: it ran none)."""

    raw: np.ndarray
    truncated: np.ndarray
    warnings: list[list[str]] | None = None
    tokens: int = 0
    encoded: float = 0.0
    started: float | None = None
    ended: float | None = None


@dataclass(frozen=True)
class BackboneContext:
    """What every backbone is built with."""

    settings: Settings
    metrics: Metrics
    health: ForwardHealth
    backend_factory: BackendFactory


class Backbone(ABC):
    name: str
    kind: str
    models: dict[str, ServedModel]  # filled by ``load``, in the column order of its results

    @abstractmethod
    async def load(self) -> None:
        """Build what serves the models (off the event loop), fill ``models``, start taking work."""

    def check_inputs(self, items: Sequence[ScoreInput], models: Sequence[str]) -> None:
        """Raise a domain error for items these models cannot score at all (``MissingLabel``: an item
        without the label a check needs), before any backbone starts on the request; default: none."""
        return None

    @abstractmethod
    async def warmup(self) -> None:
        """Run one small item through, so the first request does not pay for lazy initialisation."""

    @abstractmethod
    async def raw_rewards(self, items: Sequence[ScoreInput], models: Sequence[str]) -> RawScores:
        """Raw rewards of ``items`` for ``models`` (some of ``self.models``); a cancelled call leaves
        nothing queued. A failure is a domain error (``ModelFailed``, ``Overloaded``, …)."""

    @abstractmethod
    async def recheck(self) -> None:
        """One small item, reported to the health monitor (an unready pod gets no traffic that would
        show it works again); raises when it fails."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Runtime facts for ``/v1/models`` (workers, threads, …)."""

    @abstractmethod
    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Finish queued work (up to ``drain_timeout`` s) and release resources."""
