"""Redis reference store: one hash per model (field = prompt fingerprint, value = JSON entry), so
several service replicas share references. Lookups for a request are one HMGET round trip.

Persistence is Redis's: run it with AOF (``appendonly yes``) so a restart keeps every reference.
A connection failure raises ``StoreUnavailable`` (the API answers 503, never a wrong reference);
the client reconnects by itself when Redis is back.
"""

from __future__ import annotations

import json
import time

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .base import Reference, ReferenceStore, StoreFull, StoreUnavailable
from .redis_client import close, connect, redact

KEY_PREFIX = "rewardserve:refs:"
_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


class RedisStore(ReferenceStore):
    def __init__(self, url: str, timeout: float = 2.0):
        self.url = url
        self._r = connect(url, timeout)  # one server or Sentinel (redis_client.py)

    @staticmethod
    def _key(model: str) -> str:
        return KEY_PREFIX + model

    async def get_many(self, model: str, fingerprints: list[str]) -> dict[str, Reference]:
        if not fingerprints:
            return {}
        try:
            values = await self._r.hmget(self._key(model), fingerprints)
        except _DOWN as e:
            raise StoreUnavailable(f"redis at {self._safe_url()} unreachable ({type(e).__name__})") from None
        return {fp: Reference(**json.loads(v)) for fp, v in zip(fingerprints, values) if v is not None}

    async def put_many(self, model: str, entries: list[tuple[str, Reference]]) -> None:
        if not entries:
            return
        now = time.time()
        mapping = {fp: json.dumps({**r.to_dict(), "updated_at": r.updated_at or now}) for fp, r in entries}
        try:
            await self._r.hset(self._key(model), mapping=mapping)
        except _DOWN as e:
            raise StoreUnavailable(f"redis at {self._safe_url()} unreachable ({type(e).__name__})") from None
        except OutOfMemoryError:  # maxmemory reached with maxmemory-policy noeviction: nothing stored, nothing evicted
            raise StoreFull(f"redis at {self._safe_url()} is full (maxmemory reached): nothing was stored; "
                            "raise its maxmemory or remove unused references") from None

    async def all_rows(self) -> list[tuple[str, str, Reference]]:
        rows = []
        try:
            async for key in self._r.scan_iter(match=KEY_PREFIX + "*"):
                model = key[len(KEY_PREFIX):]
                async for fp, v in self._r.hscan_iter(key):
                    rows.append((model, fp, Reference(**json.loads(v))))
        except _DOWN as e:
            raise StoreUnavailable(f"redis at {self._safe_url()} unreachable ({type(e).__name__})") from None
        return sorted(rows, key=lambda r: (r[0], r[1]))

    def _safe_url(self) -> str:
        return redact(self.url)  # never echo a password

    async def close(self) -> None:
        await close(self._r)
