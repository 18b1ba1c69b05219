"""The reference store interface: per (reference set, model, prompt fingerprint) reference rewards.

A reference set is one calibration (one base policy): its references and, per model, its default
reference (stored under the fingerprint ``SET_DEFAULT_FINGERPRINT``). ``DEFAULT_SET`` is the set
used when a request names none; stores written before sets existed read as that set.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import InvalidSetName

DEFAULT_SET = "default"
# the fingerprint under which a set stores a model's default reference (calibration writes it); not
# a sha256 hex digest, so it never collides with a prompt's
SET_DEFAULT_FINGERPRINT = "default"
SET_NAME_MAX = 64
PAGE_ROWS = 2_000  # rows per page of a scan (iter_rows): what one read, and one piece of an export, holds
_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_set_name(name: str) -> str:
    """``name`` if it is a valid reference set name (1–64 characters of ``A-Z a-z 0-9 . _ -``,
    starting with a letter or digit), else ``InvalidSetName``."""
    if not isinstance(name, str) or not 1 <= len(name) <= SET_NAME_MAX or not _SET_NAME.fullmatch(name):
        shown = name if isinstance(name, str) and len(name) <= 80 else f"{str(name)[:80]}…"
        raise InvalidSetName(
            f"invalid reference set name {shown!r}: use 1-{SET_NAME_MAX} characters from A-Z a-z 0-9 . _ - "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Reference:
    value: float
    revision: str | None = None
    quantile: float | None = None
    n_samples: int | None = None
    policy: str | None = None
    updated_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ReferenceStore(ABC):
    url: str

    @abstractmethod
    async def get_many(
        self, model: str, fingerprints: list[str], reference_set: str = DEFAULT_SET
    ) -> dict[str, Reference]:
        """Stored references of one set for the given fingerprints (missing ones are absent)."""

    @abstractmethod
    async def put_many(
        self, model: str, entries: list[tuple[str, Reference]], reference_set: str = DEFAULT_SET
    ) -> None:
        """Insert or replace references in one set (all or nothing)."""

    @abstractmethod
    async def all_rows(self, reference_set: str | None = None) -> list[tuple[str, str, str, Reference]]:
        """Every stored (set, model, fingerprint, reference) — of one set, or of all — sorted (for export)."""

    async def iter_rows(self, reference_set: str) -> AsyncGenerator[list[tuple[str, str, str, Reference]], None]:
        """The entries of one set as ``all_rows`` gives them, a page (at most ``PAGE_ROWS`` rows) at a
        time: what a streamed export reads. Not a snapshot: entries written during the scan may or
        may not be in it. This version reads the whole set first; stores override it to read by pages."""
        rows = await self.all_rows(reference_set)
        for i in range(0, len(rows), PAGE_ROWS):
            yield rows[i : i + PAGE_ROWS]

    @abstractmethod
    async def sets(self) -> dict[str, dict[str, int]]:
        """Every set that holds references: {set: {model: number of entries}}, sorted by set."""

    @abstractmethod
    async def delete_set(self, reference_set: str) -> int:
        """Delete every entry of a set; returns how many there were."""

    async def get(self, model: str, fingerprint: str, reference_set: str = DEFAULT_SET) -> Reference | None:
        return (await self.get_many(model, [fingerprint], reference_set)).get(fingerprint)

    @abstractmethod
    async def close(self) -> None: ...
