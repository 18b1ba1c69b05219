"""Reference sets in both real stores: isolation, listing, deletion, and stores written before sets
existed (made here by a small generator that writes exactly what the previous version wrote)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

import pytest
import redis

from rewardserve.references import InvalidSetName, Reference, check_set_name, open_store


def run(coro):
    return asyncio.run(coro)


def test_sets_are_isolated_listed_exported_and_deleted(store_url):
    async def go():
        s = open_store(store_url)
        try:
            await s.put_many("m", [("f1", Reference(1.0, "r", 0.85, 8, "base-a", 10.0)), ("default", Reference(0.25))])
            await s.put_many("m", [("f1", Reference(-7.0, "r", 0.85, 8, "base-b", 11.0))], reference_set="exp-b")
            await s.put_many("n", [("f2", Reference(2.0))], reference_set="exp-b")
            # the same (model, fingerprint) in two sets: neither overwrites the other
            assert (await s.get("m", "f1")).value == 1.0
            assert (await s.get("m", "f1", "exp-b")).value == -7.0
            assert (await s.get_many("m", ["f1", "default"], "exp-b")).keys() == {"f1"}  # no default in exp-b
            assert await s.get_many("n", ["f2"]) == {}
            assert await s.sets() == {"default": {"m": 2}, "exp-b": {"m": 1, "n": 1}}
            rows = await s.all_rows("exp-b")
            assert [(rs, m, fp, r.policy) for rs, m, fp, r in rows] == [
                ("exp-b", "m", "f1", "base-b"),
                ("exp-b", "n", "f2", None),
            ]
            assert len(await s.all_rows()) == 4
            assert await s.delete_set("exp-b") == 2
            assert await s.delete_set("exp-b") == 0
            assert await s.sets() == {"default": {"m": 2}}
            assert (await s.get("m", "f1")).value == 1.0  # the other set is untouched
        finally:
            await s.close()

    run(go())


@pytest.mark.parametrize("bad", ["", "a" * 65, "has space", "a:b", "-lead", "ü", "a/b", "x*"])
def test_set_names_are_checked(bad):
    with pytest.raises(InvalidSetName, match="invalid reference set name"):
        check_set_name(bad)


@pytest.mark.parametrize("good", ["default", "a", "exp-2026.12_b", "A" * 64])
def test_valid_set_names(good):
    assert check_set_name(good) == good


# -- stores written by the previous version (no reference sets) -----------------------------------
# The generators below write exactly what the previous version's references/sqlite.py and
# references/redis.py wrote: the SQLite table keyed by (model, fingerprint), and one Redis hash per
# model under rewardserve:refs:<model> with the entry as JSON.

_PREVIOUS_SQLITE_SCHEMA = """
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

PREVIOUS_ROWS = [
    ("helpful", "default", Reference(-0.5, "rev-h", 0.85, 400, "smollm2", 1700000000.0)),
    *[("helpful", f"{i:064x}", Reference(i / 7, "rev-h", 0.85, 8, "smollm2", 1700000000.0 + i)) for i in range(40)],
    ("harmless", f"{3:064x}", Reference(1.5, None, None, None, None, 1700000123.5)),
    ("name:with:colons", f"{5:064x}", Reference(-2.25, "r", 0.5, 4, "p", 1700000999.0)),
]


def write_previous_sqlite(path) -> None:
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(_PREVIOUS_SQLITE_SCHEMA)
    conn.executemany(
        "INSERT OR REPLACE INTO refs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(m, fp, r.value, r.revision, r.quantile, r.n_samples, r.policy, r.updated_at) for m, fp, r in PREVIOUS_ROWS],
    )
    conn.close()


def write_previous_redis(url) -> None:
    r = redis.Redis.from_url(url, decode_responses=True)
    for m, fp, ref in PREVIOUS_ROWS:
        r.hset(
            "rewardserve:refs:" + m,
            mapping={fp: json.dumps({**ref.to_dict(), "updated_at": ref.updated_at or time.time()})},
        )
    r.close()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_store_of_the_previous_version_reads_as_set_default(kind, tmp_path, request):
    if kind == "sqlite":
        write_previous_sqlite(tmp_path / "old.db")
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        url = request.getfixturevalue("fresh_redis_url")
        write_previous_redis(url)
    expected = sorted(("default", m, fp, r) for m, fp, r in PREVIOUS_ROWS)

    async def go():
        s = open_store(url)
        try:
            assert await s.all_rows() == expected  # every row, every field
            assert await s.sets() == {"default": {"harmless": 1, "helpful": 41, "name:with:colons": 1}}
            got = await s.get_many("helpful", ["default", f"{3:064x}"])
            assert got["default"] == PREVIOUS_ROWS[0][2] and got[f"{3:064x}"].value == 3 / 7
            # writing another set leaves the old entries as they were
            await s.put_many("helpful", [(f"{3:064x}", Reference(99.0))], reference_set="other")
            assert (await s.get("helpful", f"{3:064x}")).value == 3 / 7
        finally:
            await s.close()
        s = open_store(url)  # a second open reads the same
        try:
            assert await s.all_rows("default") == expected
        finally:
            await s.close()

    run(go())


def test_the_previous_version_still_reads_and_writes_set_default_of_a_new_file(tmp_path):
    """A rollback keeps working: the previous version's own statements on a file this one wrote."""
    url = f"sqlite:///{tmp_path / 'new.db'}"

    async def write():
        s = open_store(url)
        await s.put_many("m", [("fp1", Reference(1.0, "r", 0.85, 8, "p", 5.0))])
        await s.put_many("m", [("fp1", Reference(-1.0))], reference_set="other")
        await s.close()

    run(write())
    conn = sqlite3.connect(str(tmp_path / "new.db"), isolation_level=None)
    conn.execute(_PREVIOUS_SQLITE_SCHEMA)
    conn.execute(
        "INSERT OR REPLACE INTO refs VALUES (?, ?, ?, ?, ?, ?, ?, ?)", ("m", "fp2", 2.0, None, None, None, None, 6.0)
    )
    assert conn.execute("SELECT model, fingerprint, value FROM refs ORDER BY model, fingerprint").fetchall() == [
        ("m", "fp1", 1.0),
        ("m", "fp2", 2.0),
    ]
    conn.close()

    async def read():
        s = open_store(url)
        try:
            return await s.sets(), (await s.get("m", "fp2")).value
        finally:
            await s.close()

    assert run(read()) == ({"default": {"m": 2}, "other": {"m": 1}}, 2.0)


def test_a_set_is_read_and_exported_page_by_page(store_url):
    """``iter_rows`` gives a set's entries in pages of at most ``PAGE_ROWS``, in ``all_rows`` order;
    the export streams them as one ``ReferenceSetContents`` document (what the HTTP route sends)."""
    from rewardserve.references import service
    from rewardserve.references.base import PAGE_ROWS
    from rewardserve.schemas import ReferenceSetContents

    async def go():
        s = open_store(store_url)
        try:
            n = PAGE_ROWS + 7
            await s.put_many("m", [(f"{i:064x}", Reference(i / 7, "r", 0.85, i, "base", 5.0)) for i in range(n)], "pg")
            await s.put_many("n", [(f"{i:064x}", Reference(float(-i), updated_at=6.0)) for i in range(n)], "pg")
            await s.put_many("m", [("f", Reference(1.0))], "other")
            pages = [p async for p in s.iter_rows("pg")]
            assert all(0 < len(p) <= PAGE_ROWS for p in pages) and len(pages) >= 3
            assert [r for p in pages for r in p] == await s.all_rows("pg")
            assert [p async for p in s.iter_rows("absent")] == []
            chunks = [c async for c in await service.export_set(s, "pg")]
            assert len(chunks) == len(pages) + 2  # the head, one per page, the tail
            doc = ReferenceSetContents.model_validate_json(b"".join(chunks))
            assert doc.reference_set == "pg" and len(doc.references) == 2 * n
            assert [(r.model, r.prompt_fingerprint, r.value, r.n_samples) for r in doc.references] == [
                (m, fp, ref.value, ref.n_samples) for _, m, fp, ref in await s.all_rows("pg")
            ]
            with pytest.raises(service.ReferenceSetNotFound):
                await service.export_set(s, "absent")
        finally:
            await s.close()

    run(go())
