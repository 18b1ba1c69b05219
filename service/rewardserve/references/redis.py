"""Redis reference store: one hash per (reference set, model) (field = prompt fingerprint, value =
JSON entry), so several service replicas share references. Lookups for a request are one HMGET
round trip.

Keys: set ``default`` keeps the layout of the versions before reference sets,
``rewardserve:refs:<model>``, so a keyspace written by them reads as set ``default`` with nothing
to migrate (and replicas of both versions share it during a rolling upgrade). Every other set is
``rewardserve:refset:<set>:<model>`` (set names never contain ``:``).

Persistence is Redis's: run it with AOF (``appendonly yes``) so a restart keeps every reference.
A connection failure raises ``StoreUnavailable`` (the API answers 503, never a wrong reference);
the client reconnects by itself when Redis is back.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT

from ..errors import StoreFull, StoreUnavailable
from .base import DEFAULT_SET, PAGE_ROWS, Reference, ReferenceStore
from .redis_client import close, connect, redact

KEY_PREFIX = "rewardserve:refs:"  # set "default": rewardserve:refs:<model>
SET_KEY_PREFIX = "rewardserve:refset:"  # any other set: rewardserve:refset:<set>:<model>
_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


class RedisStore(ReferenceStore):
    def __init__(self, url: str, timeout: float = 2.0):
        self.url = url
        self._r = connect(url, timeout)  # one server or Sentinel (redis_client.py)

    @staticmethod
    def _key(model: str, reference_set: str = DEFAULT_SET) -> str:
        if reference_set == DEFAULT_SET:
            return KEY_PREFIX + model
        return f"{SET_KEY_PREFIX}{reference_set}:{model}"

    @staticmethod
    def _parse_key(key: str) -> tuple[str, str]:
        """(set, model) of a store key."""
        if key.startswith(SET_KEY_PREFIX):
            rset, model = key[len(SET_KEY_PREFIX) :].split(":", 1)
            return rset, model
        return DEFAULT_SET, key[len(KEY_PREFIX) :]

    async def _keys(self, reference_set: str | None) -> list[str]:
        """The store's hash keys: of one set, or of every set."""
        if reference_set == DEFAULT_SET:
            patterns = [KEY_PREFIX + "*"]
        elif reference_set is not None:
            patterns = [f"{SET_KEY_PREFIX}{reference_set}:*"]
        else:
            patterns = [KEY_PREFIX + "*", SET_KEY_PREFIX + "*"]
        keys: list[str] = []
        for pattern in patterns:
            keys += [k async for k in self._r.scan_iter(match=pattern)]
        return keys

    async def get_many(
        self, model: str, fingerprints: list[str], reference_set: str = DEFAULT_SET
    ) -> dict[str, Reference]:
        if not fingerprints:
            return {}
        try:
            values = await self._r.hmget(self._key(model, reference_set), fingerprints)
        except _DOWN as e:
            raise StoreUnavailable(f"redis at {self._safe_url()} unreachable ({type(e).__name__})") from None
        return {fp: Reference(**json.loads(v)) for fp, v in zip(fingerprints, values) if v is not None}

    async def put_many(
        self, model: str, entries: list[tuple[str, Reference]], reference_set: str = DEFAULT_SET
    ) -> None:
        if not entries:
            return
        now = time.time()
        mapping: dict[FieldT, EncodableT] = {
            fp: json.dumps({**r.to_dict(), "updated_at": r.updated_at or now}) for fp, r in entries
        }
        try:
            await self._r.hset(self._key(model, reference_set), mapping=mapping)
        except _DOWN as e:
            raise StoreUnavailable(f"redis at {self._safe_url()} unreachable ({type(e).__name__})") from None
        except OutOfMemoryError:  # maxmemory reached with maxmemory-policy noeviction: nothing stored, nothing evicted
            raise StoreFull(
                f"redis at {self._safe_url()} is full (maxmemory reached): nothing was stored; "
                "raise its maxmemory or remove unused references"
            ) from None

    async def all_rows(self, reference_set: str | None = None) -> list[tuple[str, str, str, Reference]]:
        rows = []
        try:
            for key in await self._keys(reference_set):
                rset, model = self._parse_key(key)
                async for fp, v in self._r.hscan_iter(key):
                    rows.append((rset, model, fp, Reference(**json.loads(v))))
        except _DOWN as e:
            raise StoreUnavailable(f"redis at {self._safe_url()} unreachable ({type(e).__name__})") from None
        return sorted(rows, key=lambda r: (r[0], r[1], r[2]))

    async def iter_rows(self, reference_set: str) -> AsyncGenerator[list[tuple[str, str, str, Reference]], None]:
        """One model's hash at a time (HSCAN, a thousand fields a round trip), its entries decoded and
        sorted in a worker thread, then given a page at a time: memory holds one model's entries of the
        set, never the whole set, and the event loop never decodes or sorts them."""
        try:
            keys = sorted(await self._keys(reference_set), key=self._parse_key)
            for key in keys:
                rset, model = self._parse_key(key)
                fields = [(fp, v) async for fp, v in self._r.hscan_iter(key, count=1_000)]
                rows = await asyncio.to_thread(_decoded, rset, model, fields)
                for i in range(0, len(rows), PAGE_ROWS):
                    yield rows[i : i + PAGE_ROWS]
        except _DOWN as e:
            raise StoreUnavailable(f"redis at {self._safe_url()} unreachable ({type(e).__name__})") from None

    async def sets(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        try:
            for key in await self._keys(None):
                rset, model = self._parse_key(key)
                n = await self._r.hlen(key)
                if n:
                    out.setdefault(rset, {})[model] = n
        except _DOWN as e:
            raise StoreUnavailable(f"redis at {self._safe_url()} unreachable ({type(e).__name__})") from None
        return {s: dict(sorted(out[s].items())) for s in sorted(out)}

    async def delete_set(self, reference_set: str) -> int:
        deleted = 0
        try:
            for key in await self._keys(reference_set):
                async with self._r.pipeline(transaction=True) as p:
                    p.hlen(key)
                    p.delete(key)
                    n, _ = await p.execute()
                deleted += n
        except _DOWN as e:
            raise StoreUnavailable(f"redis at {self._safe_url()} unreachable ({type(e).__name__})") from None
        return deleted

    def _safe_url(self) -> str:
        return redact(self.url)  # never echo a password

    async def close(self) -> None:
        await close(self._r)


def _decoded(rset: str, model: str, fields: list[tuple[str, str]]) -> list[tuple[str, str, str, Reference]]:
    """One hash's (fingerprint, JSON entry) fields as sorted rows."""
    return [(rset, model, fp, Reference(**json.loads(v))) for fp, v in sorted(fields)]
