"""A request's small reference lookup reads on the calling thread (no thread hop: under load each
hop waits for the GIL against the forward threads, which cost the concurrency-4 bench cells ~10%);
a large one still goes to a worker thread, and neither takes the store's write lock."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

from rewardserve.references import sqlite as sq
from rewardserve.references.base import Reference


def test_small_lookups_run_inline_large_ones_in_a_worker_thread(tmp_path, monkeypatch):
    threads: list[str] = []
    read = sq.SQLiteStore._get_many

    def spy(self, *a, **kw):
        threads.append(threading.current_thread().name)
        return read(self, *a, **kw)

    monkeypatch.setattr(sq.SQLiteStore, "_get_many", spy)

    async def run() -> None:
        store = sq.SQLiteStore(tmp_path / "refs.db")
        fps = [f"{i:064x}" for i in range(sq._INLINE_LOOKUP + 1)]
        await store.put_many("m", [(fp, Reference(float(i))) for i, fp in enumerate(fps)])
        with store._lock:  # a writer holding the lock: the inline read does not wait for it
            small = await store.get_many("m", fps[: sq._INLINE_LOOKUP])
        large = await store.get_many("m", fps)
        assert len(small) == sq._INLINE_LOOKUP and len(large) == len(fps)
        await store.close()

    asyncio.run(run())
    assert threads[0] == threading.main_thread().name and threads[1] != threads[0]


def test_an_inline_lookup_on_a_busy_database_goes_to_a_worker_thread(tmp_path, monkeypatch):
    """The event loop's read never waits on a busy database (busy timeout 0): a busy error there sends
    the lookup to a worker thread, where it may wait; other errors still raise."""
    calls: list[tuple[str, float]] = []
    read = sq.SQLiteStore._get_many

    def busy_on_the_loop(self, model, fps, rset, busy_timeout=5.0):
        calls.append((threading.current_thread().name, busy_timeout))
        if busy_timeout == 0.0:
            raise sqlite3.OperationalError("database is locked")
        return read(self, model, fps, rset, busy_timeout)

    monkeypatch.setattr(sq.SQLiteStore, "_get_many", busy_on_the_loop)

    async def run() -> dict:
        store = sq.SQLiteStore(tmp_path / "refs.db")
        await store.put_many("m", [("a" * 64, Reference(1.5))])
        try:
            return await store.get_many("m", ["a" * 64])
        finally:
            await store.close()

    got = asyncio.run(run())
    assert got["a" * 64].value == 1.5
    assert calls[0] == (threading.main_thread().name, 0.0)
    assert calls[1][0] != threading.main_thread().name and calls[1][1] > 0
