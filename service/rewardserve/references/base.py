"""The reference store interface: per (model, prompt fingerprint) reference rewards."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass


class StoreUnavailable(RuntimeError):
    """The store cannot be reached right now (the request may be retried)."""


class StoreFull(StoreUnavailable):
    """The store refuses writes because it is full (Redis ``maxmemory`` with ``noeviction``)."""


@dataclass(frozen=True)
class Reference:
    value: float
    revision: str | None = None
    quantile: float | None = None
    n_samples: int | None = None
    policy: str | None = None
    updated_at: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class ReferenceStore(ABC):
    url: str

    @abstractmethod
    async def get_many(self, model: str, fingerprints: list[str]) -> dict[str, Reference]:
        """Stored references for the given fingerprints (missing ones are absent)."""

    @abstractmethod
    async def put_many(self, model: str, entries: list[tuple[str, Reference]]) -> None:
        """Insert or replace references (all or nothing)."""

    @abstractmethod
    async def all_rows(self) -> list[tuple[str, str, Reference]]:
        """Every stored (model, fingerprint, reference), sorted (for export)."""

    async def get(self, model: str, fingerprint: str) -> Reference | None:
        return (await self.get_many(model, [fingerprint])).get(fingerprint)

    @abstractmethod
    async def close(self) -> None: ...
