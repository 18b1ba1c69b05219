"""Which waiting items form the next batch (pure; the batcher's policy, ``batcher.py``).

``pick_batch``: the oldest item plus neighbours under the token budget, closest in length when
sorting, while pad tokens stay under the cap. ``pick_grouped``: for a model that shares prompt
prefixes, the items of one prompt together, the budget counted by its ``PrefixCost``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import numpy as np


class Batchable(Protocol):
    """An encoded item as the batcher sees it (``backends.base.Encoded``)."""

    input_ids: list[int]
    prefix_len: int  # leading tokens that items of the same prompt share; 0: none

    @property
    def length(self) -> int: ...


ItemT = TypeVar("ItemT", bound=Batchable)
ItemT_contra = TypeVar("ItemT_contra", bound=Batchable, contravariant=True)


class PrefixCost(Protocol):
    """Tokens a forming batch computes when items of one prompt share its forward, kept as items
    join (``backends.cost.TokenCount``): ``with_item`` → (computed, needed, shared) if one joined."""

    def add(self, key: Hashable | None, prefix_len: int, length: int) -> None: ...

    def with_item(self, key: Hashable | None, prefix_len: int, length: int) -> tuple[int, int, bool]: ...

    def cost_with_item(self, key: Hashable | None, prefix_len: int, length: int) -> int:
        """What the batch would hold (its memory, in computed tokens) if the item joined."""
        ...


@dataclass(frozen=True, slots=True)
class Scored:
    """What an item's future resolves to: its row of raw rewards and when its forward ran
    (``time.perf_counter`` seconds; the request's Server-Timing header is made from these)."""

    row: np.ndarray
    forward_start: float
    forward_end: float


def _group(item: Batchable) -> int | None:
    """The hash of the prompt prefix an item shares (None: it shares nothing)."""
    return hash(tuple(item.input_ids[: item.prefix_len])) if item.prefix_len > 0 else None


@dataclass(eq=False, slots=True)
class _Pending(Generic[ItemT]):
    enc: ItemT
    future: asyncio.Future[Scored]
    arrived: float = field(default_factory=time.perf_counter)
    group: int | None = None  # hash of the prompt prefix this item shares (None: shares nothing)


def pick_batch(
    items: list[_Pending[ItemT]],
    budget: int,
    sort_by_length: bool,
    max_padding: float = 1.0,
    max_items: int | None = None,
    cost: PrefixCost | None = None,
    plain_cost: Callable[[int, int], int] | None = None,
) -> list[_Pending[ItemT]]:
    """Choose the next batch: the oldest item (``items[0]``) plus neighbours under the token budget.

    Padded tokens = batch size × longest item. Sorted: grow a window around the oldest item in
    length order, each step adding whichever neighbour adds fewer pad tokens. Unsorted: arrival order.
    Either way an item joins only while pad tokens stay ≤ ``max_padding`` × padded tokens (on a CPU
    a padded batch costs more than its items one by one; the rest waits for the next forward), and
    while the batch has fewer than ``max_items`` items.

    ``cost`` (a fresh ``PrefixCost`` of a model that shares prompt prefixes): when the oldest item
    has company of its own prompt waiting, the batch is grouped instead (``pick_grouped``).
    ``plain_cost(n, width)``: what a plain batch holds, in computed tokens (memory-true for a model
    with a memory model, ``backends.cost.CostModel``); default ``n × width``.
    """
    cap = max_items or len(items)
    if cost is not None and items[0].group is not None and any(p.group == items[0].group for p in items[1:]):
        return pick_grouped(items, budget, sort_by_length, max_padding, cap, cost)

    def fits(n: int, width: int, real: int) -> bool:
        held = n * width if plain_cost is None else plain_cost(n, width)
        return n <= cap and held <= budget and n * width - real <= max_padding * n * width

    if not sort_by_length:
        batch, width, real = [items[0]], items[0].enc.length, items[0].enc.length
        for p in items[1:]:
            w = max(width, p.enc.length)
            if not fits(len(batch) + 1, w, real + p.enc.length):
                break
            batch.append(p)
            width, real = w, real + p.enc.length
        return batch
    order = sorted(items, key=lambda p: p.enc.length)
    i = next(k for k, p in enumerate(order) if p is items[0])
    lo = hi = i
    width = real = order[i].enc.length
    while True:
        n = hi - lo + 1
        left = order[lo - 1].enc.length if lo > 0 else None  # lengths of the neighbours
        right = order[hi + 1].enc.length if hi + 1 < len(order) else None
        left_ok = left is not None and fits(n + 1, width, real + left)
        right_ok = right is not None and fits(n + 1, right, real + right)
        if not (left_ok or right_ok):
            break
        # the side that adds less padding (left: its own; right: every item's, to the new width)
        if left is not None and left_ok and (right is None or not right_ok or width - left <= n * (right - width)):
            lo -= 1
            real += left
        else:
            assert right is not None  # right_ok holds here
            hi += 1
            width = right
            real += width
    return order[lo : hi + 1]


def pick_grouped(
    items: list[_Pending[ItemT]], budget: int, sort_by_length: bool, max_padding: float, cap: int, cost: PrefixCost
) -> list[_Pending[ItemT]]:
    """A batch that keeps prompts together: the oldest item, then the rest of its group, then other
    groups in order of arrival (items of a group closest in length to the oldest first when sorting,
    else in arrival order). An item joins while the batch's computed tokens (``cost``, empty: each
    prompt once, then the suffixes) stay within ``budget`` and its pad tokens within ``max_padding``
    of them; one that does not fit is passed over, not the end. ``cap`` (the batcher's split of the
    queue over free workers) limits the other groups' items, not the oldest's group: splitting a
    prompt's items over two forwards computes the prompt twice."""
    first = items[0]
    groups: dict[int | None, list[_Pending[ItemT]]] = {}
    for p in items[1:]:
        groups.setdefault(p.group if p.group is not None else id(p), []).append(p)
    if sort_by_length:
        for members in groups.values():
            members.sort(key=lambda p: abs(p.enc.length - first.enc.length))
    order = groups.pop(first.group, []) + [p for members in groups.values() for p in members]
    count = cost
    count.add(first.group, first.enc.prefix_len, first.enc.length)
    batch = [first]
    for p in order:
        if len(batch) >= cap and p.group != first.group:  # the worker split never splits the oldest's prompt
            break
        computed, needed, _ = count.with_item(p.group, p.enc.prefix_len, p.enc.length)
        held = count.cost_with_item(p.group, p.enc.prefix_len, p.enc.length)  # memory, not only tokens
        if held <= budget and computed - needed <= max_padding * computed:
            count.add(p.group, p.enc.prefix_len, p.enc.length)
            batch.append(p)
    return batch
