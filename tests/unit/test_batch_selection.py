"""pick_batch: the oldest item is always served, the token budget holds, sorting cuts padding."""

import asyncio
import random

from rewardserve.backends.base import Encoded
from rewardserve.batch_selection import _Pending, pick_batch


def _items(lengths):
    loop = asyncio.new_event_loop()
    try:
        return [_Pending(Encoded(input_ids=[0] * n), loop.create_future(), float(i)) for i, n in enumerate(lengths)]
    finally:
        loop.close()


def _padded(batch):
    return len(batch) * max(p.enc.length for p in batch)


def test_oldest_always_in_batch_and_budget_respected():
    rng = random.Random(0)
    for _ in range(200):
        items = _items([rng.randint(1, 300) for _ in range(rng.randint(1, 60))])
        budget = rng.choice([256, 1024, 4096])
        for sort in (True, False):
            batch = pick_batch(items, budget, sort)
            assert items[0] in batch
            assert len(set(map(id, batch))) == len(batch)
            assert len(batch) == 1 or _padded(batch) <= budget


def test_sorting_reduces_padding_on_mixed_lengths():
    rng = random.Random(1)
    lengths = [rng.choice([10, 200]) for _ in range(64)]
    items = _items(lengths)
    pad_sorted = pad_unsorted = 0
    # drain the queue both ways and add up padded tokens
    for sort in (True, False):
        rest, total = list(items), 0
        while rest:
            b = pick_batch(rest, 1024, sort)
            total += _padded(b) - sum(p.enc.length for p in b)
            ids = set(map(id, b))
            rest = [p for p in rest if id(p) not in ids]
        if sort:
            pad_sorted = total
        else:
            pad_unsorted = total
    assert pad_sorted < pad_unsorted / 3


def test_single_oversized_item_still_runs():
    items = _items([5000, 10])
    assert pick_batch(items, 1024, True) == [items[0]]


def test_padding_cap_keeps_every_batch_under_it_and_still_serves_the_oldest():
    rng = random.Random(2)
    for _ in range(200):
        items = _items([rng.randint(1, 300) for _ in range(rng.randint(1, 40))])
        cap = rng.choice([0.0, 0.1, 0.2, 0.5])
        for sort in (True, False):
            batch = pick_batch(items, 4096, sort, max_padding=cap)
            assert items[0] in batch
            pad = _padded(batch) - sum(p.enc.length for p in batch)
            assert pad <= cap * _padded(batch) + 1e-9
    # equal lengths batch fully even at cap 0; a long item does not join short ones at cap 0.2
    assert len(pick_batch(_items([50] * 10), 4096, True, max_padding=0.0)) == 10
    mixed = _items([40, 40, 40, 200])
    assert len(pick_batch(mixed, 4096, False, max_padding=0.2)) == 3
    assert len(pick_batch(mixed, 4096, False, max_padding=1.0)) == 4


def test_padding_cap_defaults_per_device():
    from rewardserve.config import BatchingConfig

    assert BatchingConfig().padding_ratio_for("cpu") == 0.2
    assert BatchingConfig().padding_ratio_for("cuda:0") == 0.5  # a real cap on cuda too
    assert BatchingConfig(max_padding_ratio=1.0).padding_ratio_for("cuda:0") == 1.0


def test_max_items_caps_the_batch_both_ways():
    items = _items([50] * 10)
    for sort in (True, False):
        batch = pick_batch(items, 100_000, sort, max_items=4)
        assert len(batch) == 4 and items[0] in batch
        assert len(pick_batch(items, 100_000, sort, max_items=None)) == 10
        assert len(pick_batch(items, 100_000, sort, max_items=1)) == 1


def test_padded_width_rounds_batches_up_but_never_past_the_limit_and_never_a_lone_item():
    from rewardserve.backends.base import padded_width

    assert [padded_width([3, w], 8) for w in (1, 7, 8, 9, 16, 17)] == [8, 8, 8, 16, 16, 24]
    assert padded_width([13, 2], 1) == 13
    assert padded_width([13], 8) == 13  # one item: nothing to align with
    assert padded_width([125, 5], 8, limit=128) == 128
    assert padded_width([126, 5], 8, limit=126) == 126  # the model's longest input caps the rounding
    assert padded_width([126, 5], 8, limit=127) == 127
