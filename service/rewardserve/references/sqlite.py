"""Embedded SQLite reference store (the default): one file, WAL mode, survives restarts.

Set ``default`` lives in table ``refs`` exactly as the versions before reference sets wrote it,
keyed by (model, fingerprint), so their files read as set ``default`` with nothing to migrate
(and an older version can still open a file written by this one). Every other set lives in table
``set_refs``, keyed by (reference_set, model, fingerprint).
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
    model TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    value REAL NOT NULL,
    revision TEXT,
    quantile REAL,
    n_samples INTEGER,
    policy TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (model, fingerprint)
);
CREATE TABLE IF NOT EXISTS set_refs (
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
);
"""
_COLUMNS = "value, revision, quantile, n_samples, policy, updated_at"
# every entry of every set, as one relation (set, model, fingerprint, columns…)
_ALL = (
    f"SELECT ? AS reference_set, model, fingerprint, {_COLUMNS} FROM refs UNION ALL "
    f"SELECT reference_set, model, fingerprint, {_COLUMNS} FROM set_refs"
)


def _where_set(rset: str) -> tuple[str, str, tuple[str, ...]]:
    """(table, condition on the set, its arguments) for the entries of set ``rset``."""
    if rset == DEFAULT_SET:
        return "refs", "1", ()
    return "set_refs", "reference_set = ?", (rset,)


class SQLiteStore(ReferenceStore):
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.url = f"sqlite:///{self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def _get_many(self, model: str, fps: list[str], rset: str) -> dict[str, Reference]:
        table, cond, args = _where_set(rset)
        out: dict[str, Reference] = {}
        with self._lock:
            for i in range(0, len(fps), 500):
                chunk = fps[i : i + 500]
                q = (
                    f"SELECT fingerprint, {_COLUMNS} FROM {table} WHERE {cond} AND model = ? "
                    f"AND fingerprint IN ({','.join('?' * len(chunk))})"
                )
                for fp, *rest in self._conn.execute(q, [*args, model, *chunk]):
                    out[fp] = Reference(*rest)
        return out

    def _put_many(self, model: str, entries: list[tuple[str, Reference]], rset: str) -> None:
        now = time.time()
        rows: list[tuple[str | float | int | None, ...]] = [
            (model, fp, r.value, r.revision, r.quantile, r.n_samples, r.policy, r.updated_at or now)
            for fp, r in entries
        ]
        if rset == DEFAULT_SET:
            q = f"INSERT OR REPLACE INTO refs (model, fingerprint, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        else:
            q = (
                f"INSERT OR REPLACE INTO set_refs (reference_set, model, fingerprint, {_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            )
            rows = [(rset, *r) for r in rows]
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                self._conn.executemany(q, rows)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def _all_rows(self, rset: str | None) -> list[tuple[str, str, str, Reference]]:
        args: tuple[str, ...]
        if rset is None:
            q, args = f"SELECT * FROM ({_ALL}) ORDER BY reference_set, model, fingerprint", (DEFAULT_SET,)
        else:
            table, cond, args = _where_set(rset)
            q, args = (
                f"SELECT ?, model, fingerprint, {_COLUMNS} FROM {table} WHERE {cond} ORDER BY model, fingerprint",
                (rset, *args),
            )
        with self._lock:
            rows = self._conn.execute(q, args).fetchall()
        return [(s, m, fp, Reference(*rest)) for s, m, fp, *rest in rows]

    def _sets(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            for s, m, n in self._conn.execute(
                f"SELECT reference_set, model, COUNT(*) FROM ({_ALL}) GROUP BY reference_set, model "
                "ORDER BY reference_set, model",
                (DEFAULT_SET,),
            ):
                out.setdefault(s, {})[m] = n
        return out

    def _delete_set(self, rset: str) -> int:
        table, cond, args = _where_set(rset)
        with self._lock:
            return self._conn.execute(f"DELETE FROM {table} WHERE {cond}", args).rowcount

    async def get_many(
        self, model: str, fingerprints: list[str], reference_set: str = DEFAULT_SET
    ) -> dict[str, Reference]:
        if len(fingerprints) <= 64:  # a handful of indexed lookups: cheaper inline than a thread hop
            return self._get_many(model, fingerprints, reference_set)
        return await asyncio.to_thread(self._get_many, model, fingerprints, reference_set)

    async def put_many(
        self, model: str, entries: list[tuple[str, Reference]], reference_set: str = DEFAULT_SET
    ) -> None:
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
