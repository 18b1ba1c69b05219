"""What a batch computes and holds: the memory model of a forward (``CostModel``) and the batcher's
running count of a forming batch (``TokenCount``), plain or with its prompt prefixes shared (prefix.py
runs a shared forward).

Pure: it works on token counts (and on a model's config, for ``CostModel.for_model``).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .base import Encoded


def prefix_key(enc: Encoded) -> tuple[int, ...] | None:
    """The tokens an item may share with others (None when it shares nothing)."""
    return tuple(enc.input_ids[: enc.prefix_len]) if enc.prefix_len > 0 else None


@dataclass(frozen=True)
class CostModel:
    """What a forward holds, per token, in units of one computed token (its working set in one
    decoder layer: hidden states, attention projections, MLP activations), so that a batch's cost is
    comparable with ``max_batch_tokens``. From the model's config (``for_model``):

    - ``kv``: one token's keys and values in one layer as attention reads them (after the GQA
      repeat that SDPA with a mask and eager attention do); held for one layer at a time;
    - ``cache``: one token of a key/value cache kept over every layer (a shared batch's prompts);
    - ``score``: one (query, key) pair of attention's working set: the mask, and the scores where
      the kernel materialises them (eager attention; fused SDPA kernels do not).
    """

    kv: float
    cache: float
    score: float

    @classmethod
    def for_model(cls, config: Any, dtype: torch.dtype, attn_implementation: str | None) -> CostModel:
        cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
        hidden = int(cfg.hidden_size)
        heads = int(getattr(cfg, "num_attention_heads", 1) or 1)
        kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
        layers = int(getattr(cfg, "num_hidden_layers", 1) or 1)
        inter = int(getattr(cfg, "intermediate_size", None) or 4 * hidden)
        b = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
        token = b * (4 * hidden + 3 * inter)
        kv = b * 2 * (heads + kv_heads) * head_dim  # the layer's own K/V and their GQA repeat
        cache = b * 2 * kv_heads * head_dim * layers
        eager = (attn_implementation or "eager") == "eager"
        score = heads * (b + 4) + b if eager else 1  # eager: scores + fp32 softmax + float mask; else a bool mask
        return cls(kv / token, cache / token, score / token)

    def plain(self, n: int, width: int) -> int:
        """A plain forward of ``n`` items padded to ``width``."""
        return math.ceil(n * width * (1 + self.kv) + n * width * width * self.score)

    def shared(self, groups: int, pw: int, n: int, sw: int) -> int:
        """A shared forward: ``groups`` prefix rows of width ``pw`` (their cache kept), then ``n``
        suffixes of width ``sw`` on top (as one chunk: an upper bound when they run in several)."""
        cache = groups * pw * self.cache
        prefix_phase = groups * pw * (1 + self.kv) + groups * pw * pw * self.score
        suffix_phase = n * sw + n * (pw + sw) * self.kv + n * sw * (pw + sw) * self.score
        return math.ceil(cache + max(prefix_phase, suffix_phase))


class TokenCount:
    """What a batch computes and holds, kept as items join (the batcher's budget; O(1) per item).

    Plain: every item padded to the longest, ``n × max length``. Shared: one row per group padded
    to the longest prefix, every keyed item's suffix padded to the longest suffix, and a plain
    forward of the items without a key. Sharing is chosen only when it computes fewer tokens, so a
    batch without a group of two or more never shares. ``needed`` is the chosen plan's tokens
    before padding (each prefix once). ``cost`` is what the chosen plan holds at its peak
    (``CostModel``; without one, the tokens it computes): the prefix cache, each item's keys and
    values over prompt + response in the layer that attention runs, and attention's working set.
    """

    __slots__ = (
        "model",
        "prefixes",
        "max_p",
        "prefix_sum",
        "keyed",
        "suffix_w",
        "suffix_sum",
        "rest_n",
        "rest_w",
        "rest_sum",
        "n",
        "max_len",
        "total",
    )

    def __init__(self, model: CostModel | None = None) -> None:
        self.model = model
        self.prefixes: set[Hashable] = set()
        self.max_p = self.prefix_sum = self.keyed = self.suffix_w = self.suffix_sum = 0
        self.rest_n = self.rest_w = self.rest_sum = self.n = self.max_len = self.total = 0

    def _state(self) -> tuple[int, ...]:
        return (
            len(self.prefixes),
            self.max_p,
            self.prefix_sum,
            self.keyed,
            self.suffix_w,
            self.suffix_sum,
            self.rest_n,
            self.rest_w,
            self.rest_sum,
            self.n,
            self.max_len,
            self.total,
        )

    def _state_with(self, key: Hashable | None, p: int, length: int) -> tuple[int, ...]:
        n, max_len, total = self.n + 1, max(self.max_len, length), self.total + length
        if key is None:
            return (
                len(self.prefixes),
                self.max_p,
                self.prefix_sum,
                self.keyed,
                self.suffix_w,
                self.suffix_sum,
                self.rest_n + 1,
                max(self.rest_w, length),
                self.rest_sum + length,
                n,
                max_len,
                total,
            )
        new = key not in self.prefixes
        return (
            len(self.prefixes) + new,
            max(self.max_p, p) if new else self.max_p,
            self.prefix_sum + p * new,
            self.keyed + 1,
            max(self.suffix_w, length - p),
            self.suffix_sum + length - p,
            self.rest_n,
            self.rest_w,
            self.rest_sum,
            n,
            max_len,
            total,
        )

    def add(self, key: Hashable | None, p: int, length: int) -> None:
        self.n, self.max_len, self.total = self.n + 1, max(self.max_len, length), self.total + length
        if key is None:
            self.rest_n, self.rest_w, self.rest_sum = self.rest_n + 1, max(self.rest_w, length), self.rest_sum + length
            return
        self.keyed += 1
        self.suffix_w, self.suffix_sum = max(self.suffix_w, length - p), self.suffix_sum + length - p
        if key not in self.prefixes:
            self.prefixes.add(key)
            self.max_p, self.prefix_sum = max(self.max_p, p), self.prefix_sum + p

    def result(self) -> tuple[int, int, bool]:
        """(computed, needed, shared)."""
        return _result(*self._state())

    def with_item(self, key: Hashable | None, p: int, length: int) -> tuple[int, int, bool]:
        """``result()`` as if the item had joined (the count itself does not change)."""
        return _result(*self._state_with(key, p, length))

    def cost(self) -> int:
        """What the batch holds at its peak, in tokens (see ``CostModel``)."""
        return _cost(self.model, *self._state())

    def cost_with_item(self, key: Hashable | None, p: int, length: int) -> int:
        """``cost()`` as if the item had joined."""
        return _cost(self.model, *self._state_with(key, p, length))


def _result(
    groups: int,
    max_p: int,
    prefix_sum: int,
    keyed: int,
    suffix_w: int,
    suffix_sum: int,
    rest_n: int,
    rest_w: int,
    rest_sum: int,
    n: int,
    max_len: int,
    total: int,
) -> tuple[int, int, bool]:
    plain = n * max_len
    if groups < keyed:
        shared = groups * max_p + keyed * suffix_w + rest_n * rest_w
        if shared < plain:
            return shared, prefix_sum + suffix_sum + rest_sum, True
    return plain, total, False


def _cost(model: CostModel | None, *state: int) -> int:
    computed, _, shared = _result(*state)
    if model is None:
        return computed
    groups, max_p, _, keyed, suffix_w, _, rest_n, rest_w, _, n, max_len, _ = state
    if not shared:
        return model.plain(n, max_len)
    # the keyed items share; the rest run in a plain forward after the shared one (its cache freed)
    return max(model.shared(groups, max_p, keyed, suffix_w), model.plain(rest_n, rest_w))


def computed_tokens(items: Sequence[tuple[Hashable | None, int, int]]) -> tuple[int, int, bool]:
    """(computed, needed, shared) of a batch of items given as (group key, prefix length, length);
    see ``TokenCount``."""
    c = TokenCount()
    for key, p, length in items:
        c.add(key, p, length)
    return c.result()


def batch_cost(batch: Sequence[Encoded], model: CostModel | None, shares: bool) -> int:
    """What a backend's forward of ``batch`` holds at its peak, in tokens (``TokenCount.cost``);
    ``shares``: the backend shares prompt prefixes."""
    c = TokenCount(model)
    for e in batch:
        key = prefix_key(e) if shares else None
        c.add(key, e.prefix_len if key is not None else 0, e.length)
    return c.cost()
