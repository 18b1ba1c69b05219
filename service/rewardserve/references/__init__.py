"""Per-prompt reference rewards r_ref(x): the store interface and its implementations, by URL."""

from __future__ import annotations

from rewardclient.fingerprint import canonical_prompt, prompt_fingerprint

from .base import DEFAULT_SET, InvalidSetName, Reference, ReferenceStore, StoreUnavailable, check_set_name


def open_store(url: str) -> ReferenceStore:
    """``sqlite:///PATH`` (embedded default) or ``redis://HOST:PORT/DB``."""
    if url.startswith("sqlite:///"):
        from .sqlite import SQLiteStore

        return SQLiteStore(url[len("sqlite:///"):])
    if url.startswith(("redis://", "rediss://", "unix://")):
        from .redis import RedisStore

        return RedisStore(url)
    raise ValueError(f"unknown reference store URL {url!r}: expected sqlite:///PATH or redis://HOST:PORT/DB")


__all__ = ["DEFAULT_SET", "InvalidSetName", "Reference", "ReferenceStore", "StoreUnavailable", "canonical_prompt", "check_set_name", "open_store", "prompt_fingerprint"]
