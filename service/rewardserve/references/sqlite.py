"""Embedded SQLite reference store (the default): one file, WAL mode, survives restarts.

One table keyed by (reference set, model, fingerprint). A file written before reference sets
existed (table ``refs`` keyed by (model, fingerprint)) is migrated when it is opened: every row
moves into set ``default``, in one transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

from .base import DEFAULT_SET, Reference, ReferenceStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS refs (
    reference_set TEXT NOT NULL,
    model TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    value REAL NOT NULL,
    revision TEXT,
    quantile REAL,
    n_samples INTEGER,
    policy TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (reference_set, model, fingerprint)
)
"""
_COLUMNS = "value, revision, quantile, n_samples, policy, updated_at"


class SQLiteStore(ReferenceStore):
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.url = f"sqlite:///{self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._migrate()
        self._lock = threading.Lock()

    def _migrate(self) -> None:
        """Create the table, or move a pre-sets table's rows into set ``default`` (one transaction;
        a second process opening the same file waits, then finds the table migrated)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            cols = [r[1] for r in self._conn.execute("PRAGMA table_info(refs)")]
            if cols and "reference_set" not in cols:
                self._conn.execute("ALTER TABLE refs RENAME TO refs_before_sets")
                self._conn.execute(_SCHEMA)
                self._conn.execute(
                    f"INSERT INTO refs (reference_set, model, fingerprint, {_COLUMNS}) "
                    f"SELECT ?, model, fingerprint, {_COLUMNS} FROM refs_before_sets", (DEFAULT_SET,))
                self._conn.execute("DROP TABLE refs_before_sets")
            else:
                self._conn.execute(_SCHEMA)
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def _get_many(self, model: str, fps: list[str], rset: str) -> dict[str, Reference]:
        out: dict[str, Reference] = {}
        with self._lock:
            for i in range(0, len(fps), 500):
                chunk = fps[i:i + 500]
                q = (f"SELECT fingerprint, {_COLUMNS} FROM refs WHERE reference_set = ? AND model = ? "
                     f"AND fingerprint IN ({','.join('?' * len(chunk))})")
                for fp, *rest in self._conn.execute(q, [rset, model, *chunk]):
                    out[fp] = Reference(*rest)
        return out

    def _put_many(self, model: str, entries: list[tuple[str, Reference]], rset: str) -> None:
        now = time.time()
        rows = [(rset, model, fp, r.value, r.revision, r.quantile, r.n_samples, r.policy, r.updated_at or now) for fp, r in entries]
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                self._conn.executemany(f"INSERT OR REPLACE INTO refs (reference_set, model, fingerprint, {_COLUMNS}) "
                                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def _all_rows(self, rset: str | None) -> list[tuple[str, str, str, Reference]]:
        where, args = ("WHERE reference_set = ?", (rset,)) if rset is not None else ("", ())
        with self._lock:
            rows = self._conn.execute(
                f"SELECT reference_set, model, fingerprint, {_COLUMNS} FROM refs {where} "
                "ORDER BY reference_set, model, fingerprint", args).fetchall()
        return [(s, m, fp, Reference(*rest)) for s, m, fp, *rest in rows]

    def _sets(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            for s, m, n in self._conn.execute(
                    "SELECT reference_set, model, COUNT(*) FROM refs GROUP BY reference_set, model ORDER BY reference_set, model"):
                out.setdefault(s, {})[m] = n
        return out

    def _delete_set(self, rset: str) -> int:
        with self._lock:
            return self._conn.execute("DELETE FROM refs WHERE reference_set = ?", (rset,)).rowcount

    async def get_many(self, model: str, fingerprints: list[str], reference_set: str = DEFAULT_SET) -> dict[str, Reference]:
        if len(fingerprints) <= 64:  # a handful of indexed lookups: cheaper inline than a thread hop
            return self._get_many(model, fingerprints, reference_set)
        return await asyncio.to_thread(self._get_many, model, fingerprints, reference_set)

    async def put_many(self, model: str, entries: list[tuple[str, Reference]], reference_set: str = DEFAULT_SET) -> None:
        await asyncio.to_thread(self._put_many, model, entries, reference_set)

    async def all_rows(self, reference_set: str | None = None) -> list[tuple[str, str, str, Reference]]:
        return await asyncio.to_thread(self._all_rows, reference_set)

    async def sets(self) -> dict[str, dict[str, int]]:
        return await asyncio.to_thread(self._sets)

    async def delete_set(self, reference_set: str) -> int:
        return await asyncio.to_thread(self._delete_set, reference_set)

    async def close(self) -> None:
        with self._lock:
            self._conn.close()
