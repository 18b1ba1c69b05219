"""What a batch costs in memory (``cost.CostModel``, ``TokenCount.cost``): shared batches count
the prompt cache, every item's keys/values over prompt + response and their padded responses; the
batcher's budget holds with it."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace

import pytest
import torch

from rewardserve.backends.base import Encoded
from rewardserve.backends.cost import CostModel, TokenCount, batch_cost, prefix_key
from rewardserve.batch_selection import _Pending, pick_batch

# Llama-3.1-8B
LLAMA_8B = SimpleNamespace(
    hidden_size=4096,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    num_hidden_layers=32,
    intermediate_size=14336,
)


def test_cost_model_of_an_8b_in_bf16():
    m = CostModel.for_model(LLAMA_8B, torch.bfloat16, "sdpa")
    token = 2 * (4 * 4096 + 3 * 14336)  # one token's working set in one layer
    assert m.cache == pytest.approx(128 * 1024 / token)  # 128 KiB of cache per token over 32 layers
    assert m.kv == pytest.approx(2 * 2 * (32 + 8) * 128 / token)
    assert m.score == pytest.approx(1 / token)  # SDPA: only a bool mask per (query, key)
    eager = CostModel.for_model(LLAMA_8B, torch.bfloat16, "eager")
    assert eager.score == pytest.approx((32 * (2 + 4) + 2) / token)  # scores, fp32 softmax, float mask
    # fp32 doubles every byte: the ratios stay
    assert CostModel.for_model(LLAMA_8B, torch.float32, "sdpa").cache == pytest.approx(m.cache)


def test_shared_cost_counts_prompt_cache_each_items_kv_and_padded_responses():
    m = CostModel(kv=0.5, cache=1.0, score=0.0)
    # one group: prompt 1000, 4 responses of 10..40 tokens (padded to 40)
    items = [("g", 1000, 1000 + r) for r in (10, 20, 30, 40)]
    c = TokenCount(m)
    for it in items:
        c.add(*it)
    computed, needed, shared = c.result()
    assert shared and computed == 1000 + 4 * 40 and needed == 1000 + 100
    cache = 1000 * 1.0
    prefix_phase = 1000 * (1 + 0.5)
    suffix_phase = 4 * 40 + 4 * (1000 + 40) * 0.5  # padded responses + each item's K/V over prompt + response
    assert c.cost() == pytest.approx(cache + max(prefix_phase, suffix_phase), abs=1)
    # without a model the cost is the tokens computed
    assert TokenCount().cost() == 0
    plain = TokenCount()
    for it in items:
        plain.add(*it)
    assert plain.cost() == computed


def test_a_grpo_group_of_64_is_far_above_its_computed_tokens():
    """The issue's case: G = 64 with short answers on an 8B. Computed tokens alone (the old count)
    say ~19k; what the batch holds is the prompt cache plus 64 items' keys/values over 2k tokens."""
    m = CostModel.for_model(LLAMA_8B, torch.bfloat16, "sdpa")
    c = TokenCount(m)
    for r in range(64):
        c.add("g", 2000, 2000 + 50 + r // 2)
    computed, _, shared = c.result()
    assert shared and computed == 2000 + 64 * 81
    assert c.cost() > 2 * computed
    # a group of 64 short answers fits the cuda default budget (32768) in one batch
    assert c.cost() <= 32768
    small = TokenCount(m)
    for _ in range(64):
        small.add("g", 2000, 2000 + 300)
    assert small.cost() > 32768  # 300-token answers do not: the batcher splits the group


def test_cost_with_item_equals_adding_it():
    rng = random.Random(0)
    for m in (None, CostModel(0.2, 1.1, 1e-4)):
        for _ in range(200):
            c, items = TokenCount(m), []
            for _ in range(rng.randint(1, 12)):
                key = rng.choice([None, "a", "b", "c"])
                p = {"a": 3, "b": 20, "c": 7}.get(key, 0)
                item = (key, p, p + rng.randint(1, 30))
                predicted = c.cost_with_item(*item)
                c.add(*item)
                items.append(item)
                assert c.cost() == predicted


def _enc(prompt: list[int], response: list[int]) -> Encoded:
    ids = prompt + response
    return Encoded(input_ids=ids, prefix_len=min(len(prompt), len(ids) - 1))


def test_batch_cost_of_a_backend_is_the_plan_it_runs():
    m = CostModel(kv=0.25, cache=1.0, score=0.0)
    prompt = list(range(100))
    group = [_enc(prompt, [1000 + i] * (5 + i)) for i in range(8)]
    assert batch_cost(group, m, shares=False) == m.plain(8, 100 + 12)
    assert batch_cost(group, m, shares=True) == m.shared(1, 100, 8, 12)
    assert batch_cost(group, m, shares=True) < batch_cost(group, m, shares=False)
    assert batch_cost(group, None, shares=True) == 100 + 8 * 12


def _pending(encs: list[Encoded]) -> list[_Pending]:
    loop = asyncio.new_event_loop()
    try:
        return [
            _Pending(e, loop.create_future(), float(i), None if prefix_key(e) is None else hash(prefix_key(e)))
            for i, e in enumerate(encs)
        ]
    finally:
        loop.close()


@pytest.mark.parametrize("shared", [True, False])
def test_batcher_batches_stay_within_the_budget_by_their_cost(shared):
    """pick_batch with a cost model: the batch's cost (batch_cost, what the backend will run) stays
    within the budget, and more than one item joins when it fits."""
    m = CostModel(kv=0.3, cache=1.2, score=1e-4)
    rng = random.Random(3)
    prompts = [list(range(k * 1000, k * 1000 + rng.randint(50, 300))) for k in range(4)]
    encs = [_enc(prompts[rng.randrange(4)], [7] * rng.randint(5, 60)) for _ in range(64)]
    items = _pending(encs)

    def pick(budget: int, max_padding: float) -> list:
        # what the batcher passes: a fresh prefix counter on the model's memory model when it shares
        # prompt prefixes, and the memory model's cost of a plain batch
        cost = TokenCount(m) if shared else None
        return pick_batch(items, budget, True, max_padding=max_padding, cost=cost, plain_cost=m.plain)

    for budget in (2_000, 6_000, 20_000):
        batch = pick(budget, 0.5)
        encs_of = [p.enc for p in batch]
        if len(batch) > 1:
            assert batch_cost(encs_of, m, shared) <= budget
        assert len(batch) >= 1 and batch[0] is items[0] or items[0] in batch
    big = pick(10**9, 1.0)
    small = pick(3_000, 1.0)
    assert len(big) > len(small) >= 1
