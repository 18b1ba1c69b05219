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
from collections.abc import AsyncGenerator
from pathlib import Path

from .base import DEFAULT_SET, PAGE_ROWS, Reference, ReferenceStore

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


def _where_set(rset: str) -> tuple[str, str, tuple[str, ...]]:
    """(table, condition on the set, its arguments) for the entries of set ``rset``."""
    if rset == DEFAULT_SET:
        return "refs", "1", ()
    return "set_refs", "reference_set = ?", (rset,)


_INLINE_LOOKUP = 64  # a lookup of at most this many fingerprints runs on the calling thread


class SQLiteStore(ReferenceStore):
    """Every call runs in a worker thread, except a request's lookup of a few fingerprints
    (``_INLINE_LOOKUP``), which reads on the event loop's own read connection. Writes go through one
    connection under a lock; reads use a connection of their own per thread and take no lock (WAL:
    readers and the writer never wait for each other), so a lookup never waits for a listing, an
    export or a write, and scans go page by page."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.url = f"sqlite:///{self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()  # the write connection
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False

    def _reader(self, busy_timeout: float = 5.0) -> sqlite3.Connection:
        """This thread's read connection (opened on first use; the event loop's opens with
        ``busy_timeout`` 0: it never waits on a busy database)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            with self._readers_lock:
                if self._closed:
                    raise sqlite3.ProgrammingError("the store is closed")
                conn = sqlite3.connect(
                    str(self.path), timeout=busy_timeout, check_same_thread=False, isolation_level=None
                )
                conn.execute("PRAGMA query_only=ON")
                self._readers.append(conn)
            self._local.conn = conn
        return conn

    def _get_many(self, model: str, fps: list[str], rset: str, busy_timeout: float = 5.0) -> dict[str, Reference]:
        table, cond, args = _where_set(rset)
        out: dict[str, Reference] = {}
        conn = self._reader(busy_timeout)
        for i in range(0, len(fps), 500):
            chunk = fps[i : i + 500]
            q = (
                f"SELECT fingerprint, {_COLUMNS} FROM {table} WHERE {cond} AND model = ? "
                f"AND fingerprint IN ({','.join('?' * len(chunk))})"
            )
            for fp, *rest in conn.execute(q, [*args, model, *chunk]):
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

    def _page(self, rset: str, after: tuple[str, str]) -> list[tuple[str, str, str, Reference]]:
        """Up to ``PAGE_ROWS`` entries of one set after (model, fingerprint) ``after``, in that order
        (a short indexed read along the primary key)."""
        table, cond, args = _where_set(rset)
        rows = self._reader().execute(
            f"SELECT model, fingerprint, {_COLUMNS} FROM {table} WHERE {cond} AND (model, fingerprint) > (?, ?) "
            f"ORDER BY model, fingerprint LIMIT {PAGE_ROWS}",
            (*args, *after),
        )
        return [(rset, m, fp, Reference(*rest)) for m, fp, *rest in rows]

    def _scan(self, rset: str) -> list[tuple[str, str, str, Reference]]:
        """Every entry of one set, in (model, fingerprint) order, read a page at a time."""
        out, after = list[tuple[str, str, str, Reference]](), ("", "")
        while True:
            page = self._page(rset, after)
            out.extend(page)
            if len(page) < PAGE_ROWS:
                return out
            after = (page[-1][1], page[-1][2])

    def _set_names(self) -> list[str]:
        """The sets that hold entries, sorted (skipping from one set to the next along the index)."""
        conn, names = self._reader(), []
        if conn.execute("SELECT 1 FROM refs LIMIT 1").fetchone():
            names.append(DEFAULT_SET)
        row = conn.execute("SELECT MIN(reference_set) FROM set_refs").fetchone()
        while row and row[0] is not None:
            names.append(row[0])
            row = conn.execute("SELECT MIN(reference_set) FROM set_refs WHERE reference_set > ?", (row[0],)).fetchone()
        return sorted(set(names))

    def _all_rows(self, rset: str | None) -> list[tuple[str, str, str, Reference]]:
        if rset is not None:
            return self._scan(rset)
        return [row for name in self._set_names() for row in self._scan(name)]

    def _sets(self) -> dict[str, dict[str, int]]:
        conn, out = self._reader(), dict[str, dict[str, int]]()
        for name in self._set_names():
            table, cond, args = _where_set(name)
            for m, n in conn.execute(
                f"SELECT model, COUNT(*) FROM {table} WHERE {cond} GROUP BY model ORDER BY model", args
            ):
                out.setdefault(name, {})[m] = n
        return out

    def _delete_set(self, rset: str) -> int:
        table, cond, args = _where_set(rset)
        with self._lock:
            return self._conn.execute(f"DELETE FROM {table} WHERE {cond}", args).rowcount

    async def get_many(
        self, model: str, fingerprints: list[str], reference_set: str = DEFAULT_SET
    ) -> dict[str, Reference]:
        if len(fingerprints) <= _INLINE_LOOKUP:
            # a handful of indexed reads on this thread's own read connection, which takes no lock
            # and never waits for a writer (WAL): cheaper than a thread hop, which under load costs
            # a GIL handover against the forward threads each way
            # (in the rare case the database is busy, e.g. recovering its WAL, the lookup goes to a
            # worker thread instead of waiting here)
            try:
                return self._get_many(model, fingerprints, reference_set, busy_timeout=0.0)
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
        return await asyncio.to_thread(self._get_many, model, fingerprints, reference_set)

    async def put_many(
        self, model: str, entries: list[tuple[str, Reference]], reference_set: str = DEFAULT_SET
    ) -> None:
        await asyncio.to_thread(self._put_many, model, entries, reference_set)

    async def all_rows(self, reference_set: str | None = None) -> list[tuple[str, str, str, Reference]]:
        return await asyncio.to_thread(self._all_rows, reference_set)

    async def iter_rows(self, reference_set: str) -> AsyncGenerator[list[tuple[str, str, str, Reference]], None]:
        """Each page read in a worker thread of its own: no read stays open, and nothing waits on a
        lock, for longer than one page."""
        after = ("", "")
        while True:
            page = await asyncio.to_thread(self._page, reference_set, after)
            if page:
                yield page
            if len(page) < PAGE_ROWS:
                return
            after = (page[-1][1], page[-1][2])

    async def sets(self) -> dict[str, dict[str, int]]:
        return await asyncio.to_thread(self._sets)

    async def delete_set(self, reference_set: str) -> int:
        return await asyncio.to_thread(self._delete_set, reference_set)

    async def close(self) -> None:
        with self._readers_lock:
            self._closed = True
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        with self._lock:
            self._conn.close()
