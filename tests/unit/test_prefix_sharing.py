"""Prefix sharing, the pure parts: token counts of a batch, grouping, pooling position, and the
batcher's group-aware batch selection."""

import asyncio
import random

from rewardserve.backends.base import Encoded
from rewardserve.backends.prefix import TokenCount, computed_tokens, plan, pool_index, prefix_key, suffix_chunks
from rewardserve.batch_selection import _Pending, pick_batch


def _enc(prompt: list[int], response: list[int]) -> Encoded:
    ids = prompt + response
    return Encoded(input_ids=ids, prefix_len=min(len(prompt), len(ids) - 1))


def _pending(encs: list[Encoded]) -> list[_Pending]:
    loop = asyncio.new_event_loop()
    try:
        return [
            _Pending(e, loop.create_future(), float(i), None if prefix_key(e) is None else hash(prefix_key(e)))
            for i, e in enumerate(encs)
        ]
    finally:
        loop.close()


def _count(batch) -> tuple[int, int, bool]:
    return computed_tokens([(p.group, p.enc.prefix_len, p.enc.length) for p in batch])


def test_computed_tokens_counts_each_prompt_once_and_shares_only_when_cheaper():
    # one group of 3: prefix 10 once + the suffixes padded to the longest (3 × 20); needed: 10 + 20 + 10 + 5
    assert computed_tokens([("a", 10, 30), ("a", 10, 20), ("a", 10, 15)]) == (10 + 3 * 20, 10 + 35, True)
    # no two items share a prompt: plain, whatever the prefixes
    assert computed_tokens([("a", 10, 30), ("b", 10, 20)]) == (60, 50, False)
    assert computed_tokens([("a", 10, 30)]) == (30, 30, False)
    # items without a key run in a plain forward of their own
    assert computed_tokens([("a", 10, 30), ("a", 10, 20), (None, 0, 50), (None, 0, 40)]) == (
        10 + 2 * 20 + 2 * 50,
        10 + 30 + 90,
        True,
    )
    # two groups: prefix rows padded to the longest prefix, suffixes to the longest suffix
    assert computed_tokens([("a", 5, 10), ("a", 5, 8), ("b", 40, 42), ("b", 40, 41)]) == (
        2 * 40 + 4 * 5,
        5 + 40 + 5 + 3 + 2 + 1,
        True,
    )
    # sharing that would pad more than it saves is not chosen
    assert computed_tokens([("a", 1, 100), ("a", 1, 100), ("b", 1, 2), ("c", 99, 100)]) == (400, 302, False)
    assert computed_tokens([]) == (0, 0, False)


def test_suffix_chunks_keep_each_chunks_padding_under_the_cap():
    assert suffix_chunks([5, 50, 48, 6, 45], 1.0) == [[1, 2, 4, 3, 0]]  # no cap: one chunk, longest first
    assert suffix_chunks([5, 50, 48, 6, 45], 0.2) == [[1, 2, 4], [3, 0]]
    assert suffix_chunks([7, 7, 7], 0.0) == [[0, 1, 2]]
    assert suffix_chunks([], 0.2) == []
    rng = random.Random(1)
    for _ in range(200):
        lengths = [rng.randint(1, 200) for _ in range(rng.randint(1, 20))]
        cap = rng.choice([0.0, 0.1, 0.2, 0.5])
        chunks = suffix_chunks(lengths, cap)
        assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
        for c in chunks:
            padded = len(c) * max(lengths[i] for i in c)
            assert padded - sum(lengths[i] for i in c) <= cap * padded + 1e-9


def test_token_count_with_item_equals_adding_it():
    rng = random.Random(0)
    for _ in range(300):
        c, items = TokenCount(), []
        for _ in range(rng.randint(1, 12)):
            key = rng.choice([None, "a", "b", "c"])
            p = {"a": 3, "b": 20, "c": 7}.get(key, 0)
            item = (key, p, p + rng.randint(1, 30))
            assert c.with_item(*item) == computed_tokens(items + [item])
            c.add(*item)
            items.append(item)
            assert c.result() == computed_tokens(items)


def test_plan_groups_identical_prefixes_and_leaves_keyless_items_to_a_plain_forward():
    a, b = [1, 2, 3], [1, 2, 4]  # share two tokens, but prompts differ: two groups
    batch = [_enc(a, [7, 8]), _enc(b, [9]), _enc(a, [5]), Encoded(input_ids=[6]), _enc(b, [5, 5, 5])]
    p = plan(batch)
    assert p is not None
    assert p.groups == [[0, 2], [1, 4]] and p.prefix_lens == [3, 3] and p.rest == [3]
    assert plan([_enc(a, [7]), _enc(b, [7])]) is None  # no shared prompt
    assert plan([_enc(a, [7])]) is None


def test_prefix_len_leaves_at_least_one_token():
    e = _enc([1, 2, 3], [])
    assert e.prefix_len == 2 and prefix_key(e) == (1, 2)
    assert prefix_key(_enc([], [4, 5])) is None


def test_pool_index_is_the_rightmost_non_pad_token():
    assert pool_index([5, 6, 7], pad_id=0) == 2
    assert pool_index([5, 0, 7, 0], pad_id=0) == 2
    assert pool_index([0, 0], pad_id=0) == 0
    assert pool_index([5, 6], pad_id=None) == 1


def _grpo_queue(rng, n_prompts, g_choices=(1, 4, 8), interleave=False):
    encs = []
    groups = []
    for k in range(n_prompts):
        prompt = [1000 + k] + [rng.randint(3, 99) for _ in range(rng.randint(1, 60))]
        groups.append(
            [
                _enc(prompt, [rng.randint(3, 99) for _ in range(rng.randint(1, 40))])
                for _ in range(rng.choice(g_choices))
            ]
        )
    if interleave:  # G separate requests per prompt, arriving mixed with other prompts' requests
        while any(groups):
            g = rng.choice([g for g in groups if g])
            encs.append(g.pop(0))
    else:
        encs = [e for g in groups for e in g]
    return _pending(encs)


def test_grouped_batches_keep_the_oldest_and_respect_budget_cap_and_padding():
    rng = random.Random(3)
    for _ in range(200):
        items = _grpo_queue(rng, rng.randint(1, 8), interleave=rng.random() < 0.5)
        budget = rng.choice([128, 256, 1024])
        cap = rng.choice([0.2, 0.5, 1.0])
        for sort in (True, False):
            batch = pick_batch(items, budget, sort, cap, cost=TokenCount())
            assert items[0] in batch and len(set(map(id, batch))) == len(batch)
            computed, needed, _ = _count(batch)
            assert len(batch) == 1 or computed <= budget
            # grouped: padding of the shared plan within the cap; a lone oldest item: the plain rule
            plain = len(batch) * max(p.enc.length for p in batch)
            plain_pad = plain - sum(p.enc.length for p in batch)
            assert computed - needed <= cap * computed + 1e-9 or plain_pad <= cap * plain + 1e-9


def test_a_prompts_items_stay_together_when_the_budget_allows():
    rng = random.Random(4)
    for interleave in (False, True):
        items = _grpo_queue(rng, 6, g_choices=(8,), interleave=interleave)
        first = items[0].group
        mine = [p for p in items if p.group == first]
        # a budget for the whole group and the worker split (max_items) of two free workers
        batch = pick_batch(items, 10_000, True, 1.0, max_items=-(-len(items) // 2), cost=TokenCount())
        assert all(p in batch for p in mine)
        # the same items in plain selection (not shared) ignore prompts
        plain = pick_batch(items, 10_000, True, 1.0, max_items=4)
        assert len(plain) == 4


def test_grouping_computes_fewer_tokens_than_plain_batches_over_a_whole_queue():
    rng = random.Random(5)
    items = _grpo_queue(rng, 12, g_choices=(8,), interleave=True)
    totals = {}
    for shared in (True, False):
        rest, total = list(items), 0
        while rest:
            b = pick_batch(rest, 1024, True, 0.5, cost=TokenCount() if shared else None)
            total += _count(b)[0] if shared else len(b) * max(p.enc.length for p in b)
            ids = set(map(id, b))
            rest = [p for p in rest if id(p) not in ids]
        totals[shared] = total
    assert totals[True] < 0.8 * totals[False]


def test_groups_of_one_select_as_without_sharing():
    rng = random.Random(6)
    items = _grpo_queue(rng, 30, g_choices=(1,))
    for sort in (True, False):
        assert pick_batch(items, 512, sort, 0.2, cost=TokenCount()) == pick_batch(items, 512, sort, 0.2)
