"""What one running service holds: its settings, metrics, health, backbone registry, scoring
pipeline, reference service and store."""

from __future__ import annotations

from dataclasses import dataclass

from .config import Settings
from .health import ForwardHealth
from .metrics import Metrics
from .references import ReferenceStore
from .references.service import ReferenceService
from .registry import BackboneRegistry
from .scoring import Scorer


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    health: ForwardHealth  # forward failures / hung forwards (health.py)
    registry: BackboneRegistry  # every backbone and its models; loads in the background at start-up
    scorer: Scorer | None = None  # made at start-up (the app's lifespan), before the first request
    references: ReferenceService | None = None  # likewise
    store: ReferenceStore | None = None
    draining: bool = False  # shutting down: /readyz says 503, in-flight and new requests are still served

    @property
    def loaded(self) -> bool:
        """Every model loaded and warmed up: scoring works."""
        return self.registry.loaded

    @property
    def load_error(self) -> str | None:
        return self.registry.load_error

    @property
    def ready(self) -> bool:
        return self.loaded and not self.draining and not self.health.not_ready()
