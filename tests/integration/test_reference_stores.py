"""The same suite against both real stores: SQLite (file) and Redis (a real server)."""

from __future__ import annotations

import asyncio

import pytest

from rewardserve.references import Reference, StoreUnavailable, open_store


def run(coro):
    return asyncio.run(coro)


def test_put_get_replace_and_export(store_url):
    async def go():
        s = open_store(store_url)
        try:
            assert await s.get_many("m", ["a" * 64]) == {}
            await s.put_many("m", [("f1", Reference(1.5, "rev1", 0.85, 8, "pol", 100.0)), ("f2", Reference(-2.0))])
            await s.put_many("other", [("f1", Reference(9.0))])
            got = await s.get_many("m", ["f1", "f2", "f3"])
            assert set(got) == {"f1", "f2"}
            assert got["f1"] == Reference(1.5, "rev1", 0.85, 8, "pol", 100.0)
            assert got["f2"].value == -2.0 and got["f2"].updated_at > 0
            await s.put_many("m", [("f1", Reference(3.0, "rev2"))])
            assert (await s.get("m", "f1")).value == 3.0
            assert (await s.get("other", "f1")).value == 9.0
            rows = await s.all_rows()
            assert [(rs, m, fp) for rs, m, fp, _ in rows] == [
                ("default", "m", "f1"),
                ("default", "m", "f2"),
                ("default", "other", "f1"),
            ]
        finally:
            await s.close()

    run(go())


def test_survives_reopen(store_url):
    async def write():
        s = open_store(store_url)
        await s.put_many("m", [(f"fp{i}", Reference(float(i))) for i in range(500)])
        await s.close()

    async def read():
        s = open_store(store_url)
        got = await s.get_many("m", [f"fp{i}" for i in range(500)])
        await s.close()
        return got

    run(write())
    got = run(read())
    assert len(got) == 500 and all(got[f"fp{i}"].value == float(i) for i in range(500))


def test_unreachable_redis_raises_store_unavailable():
    from rewardserve.service_process import free_port

    async def go():
        s = open_store(f"redis://127.0.0.1:{free_port()}/0")
        try:
            with pytest.raises(StoreUnavailable, match="unreachable"):
                await s.get_many("m", ["x"])
            with pytest.raises(StoreUnavailable):
                await s.put_many("m", [("x", Reference(1.0))])
        finally:
            await s.close()

    run(go())


def test_unknown_url_scheme():
    with pytest.raises(ValueError, match="sqlite:///PATH or redis://"):
        open_store("postgres://x")
