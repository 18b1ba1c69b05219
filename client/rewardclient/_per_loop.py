"""One async client per event loop: an ``httpx.AsyncClient`` (its connection pool) belongs to the loop
it first ran on, and trainers run reward coroutines on loops of their own (TRL's daemon loop,
verl's reward-loop workers), sometimes a new one per call (``asyncio.run``)."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerLoop(Generic[T]):
    """``get(key, make)``: the value made for ``key`` on the running loop (made on first use); values
    go with their loop when it is collected."""

    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, T]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        with self._lock:
            values = self._by_loop.setdefault(loop, {})
            value = values.get(key)
            if value is None:
                value = values[key] = make()
            return value
