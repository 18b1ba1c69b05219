"""Out-of-memory forwards: split the batch and try the halves, down to one item.

A batch's memory is estimated (``Backend.batch_cost``), not measured: fragmentation, another process
on the GPU or an unusually long item can still make a forward run out of device memory. Failing the
whole batch would fail every request in it, and the clients would retry the same items into the
same batch. Instead the forward is retried on each half of the batch (after returning the cached
blocks to the allocator), recursively; an item that runs out of memory alone fails on its own and
the others get their rewards. Only ``torch.OutOfMemoryError`` splits: any other error is the
forward's own and fails the batch as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch

log = logging.getLogger("rewardserve.oom")
T = TypeVar("T")
# torch >= 2.5 names it at the top level (an alias of torch.cuda.OutOfMemoryError, also raised by MPS/XPU)
OOM: type[BaseException] = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def _free_cached_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def forward_splitting_on_oom(
    forward: Callable[[list[T]], np.ndarray], batch: Sequence[T]
) -> tuple[np.ndarray, dict[int, BaseException]]:
    """``forward(batch)``, with a batch that runs out of memory split in halves and each half run
    the same way. Returns (rows, failures): ``failures`` maps the index of each item that ran out
    of memory alone to its error (its row is NaN). When every item failed, or the batch is a single
    item, the error is raised (the batch fails as a whole)."""
    items = list(batch)
    try:
        return forward(items), {}
    except OOM:
        if len(items) < 2:
            raise
    _free_cached_memory()
    log.warning("forward of %d items ran out of memory: trying it in halves", len(items))
    rows: np.ndarray | None = None
    failures: dict[int, BaseException] = {}
    last: BaseException | None = None
    stack: list[tuple[int, list[T]]] = [(0, items)]  # (offset, items) still to run
    first = True
    while stack:
        offset, part = stack.pop()
        if first:  # the whole batch already failed: go straight to its halves
            first = False
        else:
            try:
                out = forward(part)
            except OOM as e:
                _free_cached_memory()
                if len(part) == 1:
                    failures[offset], last = e, e
                    log.warning("an item of %d tokens ran out of memory alone", _length(part[0]))
                    continue
            else:
                if rows is None:
                    rows = np.full((len(items), out.shape[1]), np.nan)
                rows[offset : offset + len(part)] = out
                continue
        half = len(part) // 2
        stack.append((offset + half, part[half:]))
        stack.append((offset, part[:half]))
    if rows is None:
        assert last is not None
        raise last
    return rows, failures


def _length(item: object) -> int:
    return int(getattr(item, "length", 0))
