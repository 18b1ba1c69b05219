"""Embedded SQLite reference store (the default): one file, WAL mode, survives restarts."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

from .base import Reference, ReferenceStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS refs (
    model TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    value REAL NOT NULL,
    revision TEXT,
    quantile REAL,
    n_samples INTEGER,
    policy TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (model, fingerprint)
)
"""


class SQLiteStore(ReferenceStore):
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.url = f"sqlite:///{self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(_SCHEMA)
        self._lock = threading.Lock()

    def _get_many(self, model: str, fps: list[str]) -> dict[str, Reference]:
        out: dict[str, Reference] = {}
        with self._lock:
            for i in range(0, len(fps), 500):
                chunk = fps[i:i + 500]
                q = f"SELECT fingerprint, value, revision, quantile, n_samples, policy, updated_at FROM refs WHERE model = ? AND fingerprint IN ({','.join('?' * len(chunk))})"
                for fp, *rest in self._conn.execute(q, [model, *chunk]):
                    out[fp] = Reference(*rest)
        return out

    def _put_many(self, model: str, entries: list[tuple[str, Reference]]) -> None:
        now = time.time()
        rows = [(model, fp, r.value, r.revision, r.quantile, r.n_samples, r.policy, r.updated_at or now) for fp, r in entries]
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                self._conn.executemany("INSERT OR REPLACE INTO refs VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def _all_rows(self) -> list[tuple[str, str, Reference]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT model, fingerprint, value, revision, quantile, n_samples, policy, updated_at FROM refs ORDER BY model, fingerprint"
            ).fetchall()
        return [(m, fp, Reference(*rest)) for m, fp, *rest in rows]

    async def get_many(self, model: str, fingerprints: list[str]) -> dict[str, Reference]:
        if len(fingerprints) <= 64:  # a handful of indexed lookups: cheaper inline than a thread hop
            return self._get_many(model, fingerprints)
        return await asyncio.to_thread(self._get_many, model, fingerprints)

    async def put_many(self, model: str, entries: list[tuple[str, Reference]]) -> None:
        await asyncio.to_thread(self._put_many, model, entries)

    async def all_rows(self) -> list[tuple[str, str, Reference]]:
        return await asyncio.to_thread(self._all_rows)

    async def close(self) -> None:
        with self._lock:
            self._conn.close()
