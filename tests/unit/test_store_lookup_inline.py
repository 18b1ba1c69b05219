"""A request's small reference lookup reads on the calling thread (no thread hop: under load each
hop waits for the GIL against the forward threads, which cost the concurrency-4 bench cells ~10%);
a large one still goes to a worker thread, and neither takes the store's write lock."""

from __future__ import annotations

import asyncio
import threading

from rewardserve.references import sqlite as sq
from rewardserve.references.base import Reference


def test_small_lookups_run_inline_large_ones_in_a_worker_thread(tmp_path, monkeypatch):
    threads: list[str] = []
    read = sq.SQLiteStore._get_many

    def spy(self, *a):
        threads.append(threading.current_thread().name)
        return read(self, *a)

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
