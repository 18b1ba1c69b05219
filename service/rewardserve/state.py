"""What one running service holds: its settings, metrics, scorer, reference store and health."""

from __future__ import annotations

from dataclasses import dataclass

from .config import Settings
from .health import ForwardHealth
from .metrics import Metrics
from .references import ReferenceStore
from .scoring import Scorer


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    health: ForwardHealth  # forward failures / hung forwards (health.py)
    scorer: Scorer | None = None  # made at start-up (the app's lifespan), before the first request
    store: ReferenceStore | None = None
    draining: bool = False  # shutting down: /readyz says 503, in-flight and new requests are still served

    @property
    def loaded(self) -> bool:
        """Every model loaded and warmed up: scoring works."""
        return self.scorer is not None and self.scorer.loaded

    @property
    def load_error(self) -> str | None:
        return self.scorer.load_error if self.scorer else None

    @property
    def ready(self) -> bool:
        return self.loaded and not self.draining and not self.health.not_ready()
