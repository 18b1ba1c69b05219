"""Per-prompt reference rewards r_ref(x): the store interface and its implementations, by URL."""

from __future__ import annotations

from rewardclient.protocol import canonical_prompt, prompt_fingerprint

from ..errors import InvalidSetName, StoreFull, StoreUnavailable
from .base import DEFAULT_SET, Reference, ReferenceStore, check_set_name


def open_store(url: str) -> ReferenceStore:
    """``sqlite:///PATH`` (embedded default), ``redis://HOST:PORT/DB`` or ``redis+sentinel://…`` (redis_client.py)."""
    if url.startswith("sqlite:///"):
        from .sqlite import SQLiteStore

        return SQLiteStore(url[len("sqlite:///") :])
    if url.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://")):
        from .redis import RedisStore

        return RedisStore(url)
    scheme = url.split("://", 1)[0] + "://" if "://" in url else "(no scheme)"  # never echo a password
    raise ValueError(
        f"unknown reference store URL scheme {scheme}: expected sqlite:///PATH or redis://HOST:PORT/DB "
        "(or redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB])"
    )


__all__ = [
    "DEFAULT_SET",
    "InvalidSetName",
    "Reference",
    "ReferenceStore",
    "StoreFull",
    "StoreUnavailable",
    "canonical_prompt",
    "check_set_name",
    "open_store",
    "prompt_fingerprint",
]
