"""Prompt-prefix sharing for decoder reward models: a group's prompt runs once, its responses on top.

A decoder reads causally, so the hidden states and key/value cache of a prompt's tokens are the same
for every response to it. Items of a batch whose first ``prefix_len`` tokens are identical form a
group; one forward runs each group's prefix (one row per group), the cache is expanded to one row
per item, and a second forward runs every item's remaining tokens (its suffix) on top of its
group's prefix, with position ids continuing the prefix and a 4D mask that hides the other groups'
padding. The reward is read where the plain forward reads it (the item's rightmost non-pad token),
so the result is the plain forward's up to float rounding.

The planning (which items group, and whether sharing computes fewer tokens than a plain batch) is
pure and works on token counts; ``shared_forward`` runs the plan.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .base import Encoded, padded_width


def prefix_key(enc: Encoded) -> tuple[int, ...] | None:
    """The tokens an item may share with others (None when it shares nothing)."""
    return tuple(enc.input_ids[: enc.prefix_len]) if enc.prefix_len > 0 else None


class TokenCount:
    """Tokens a batch computes, kept as items join (the batcher's budget; O(1) per item).

    Plain: every item padded to the longest, ``n × max length``. Shared: one row per group padded
    to the longest prefix, every keyed item's suffix tokens (``shared_forward`` runs the suffixes in
    length-sorted chunks whose padding stays within the batcher's cap, so their padding is not
    counted), and a plain forward of the items without a key. Sharing is chosen only when it
    computes fewer tokens, so a batch without a group of two or more never shares. ``needed`` is
    the chosen plan's tokens before padding (each prefix once).
    """

    __slots__ = (
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

    def __init__(self) -> None:
        self.prefixes: set[Hashable] = set()
        self.max_p = self.prefix_sum = self.keyed = self.suffix_w = self.suffix_sum = 0
        self.rest_n = self.rest_w = self.rest_sum = self.n = self.max_len = self.total = 0

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
        return self._result(
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

    def with_item(self, key: Hashable | None, p: int, length: int) -> tuple[int, int, bool]:
        """``result()`` as if the item had joined (the count itself does not change)."""
        n, max_len, total = self.n + 1, max(self.max_len, length), self.total + length
        if key is None:
            return self._result(
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
        return self._result(
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

    @staticmethod
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
            shared = groups * max_p + suffix_sum + rest_n * rest_w
            if shared < plain:
                return shared, prefix_sum + suffix_sum + rest_sum, True
        return plain, total, False


def computed_tokens(items: Sequence[tuple[Hashable | None, int, int]]) -> tuple[int, int, bool]:
    """(computed, needed, shared) of a batch of items given as (group key, prefix length, length);
    see ``TokenCount``."""
    c = TokenCount()
    for key, p, length in items:
        c.add(key, p, length)
    return c.result()


def suffix_chunks(lengths: Sequence[int], max_padding: float = 1.0) -> list[list[int]]:
    """Split items (their suffix lengths) into forwards of similar length: longest first, an item
    joins the current chunk while its pad tokens stay ≤ ``max_padding`` × its padded tokens (1.0:
    one chunk)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    chunks: list[list[int]] = []
    width = real = 0
    for i in order:
        if (
            chunks
            and (len(chunks[-1]) + 1) * width - (real + lengths[i]) <= max_padding * (len(chunks[-1]) + 1) * width
        ):
            chunks[-1].append(i)
            real += lengths[i]
        else:
            chunks.append([i])
            width = real = lengths[i]
    return chunks


@dataclass(frozen=True)
class PrefixPlan:
    groups: list[list[int]]  # item indices of each group, groups in order of first appearance
    prefix_lens: list[int]  # tokens each group's items share
    rest: list[int]  # items without a prefix to share (a 1-token input): a plain forward of their own


def plan(batch: Sequence[Encoded]) -> PrefixPlan | None:
    """Group the items by their shared prefix; None when a plain forward computes no more tokens."""
    keys = [prefix_key(e) for e in batch]
    _, _, shared = computed_tokens([(k, e.prefix_len, e.length) for k, e in zip(keys, batch)])
    if not shared:
        return None
    index: dict[tuple[int, ...], int] = {}
    groups: list[list[int]] = []
    lens: list[int] = []
    rest: list[int] = []
    for i, k in enumerate(keys):
        if k is None:
            rest.append(i)
            continue
        g = index.setdefault(k, len(groups))
        if g == len(groups):
            groups.append([])
            lens.append(batch[i].prefix_len)
        groups[g].append(i)
    return PrefixPlan(groups, lens, rest)


def pool_index(ids: Sequence[int], pad_id: int | None) -> int:
    """Where a sequence classifier reads the reward: the rightmost token that is not the pad token
    (Hugging Face's rule for right- and left-padded batches; 0 when every token is pad)."""
    if pad_id is None:
        return len(ids) - 1
    for i in range(len(ids) - 1, -1, -1):
        if ids[i] != pad_id:
            return i
    return 0


def supports_sharing(model: Any) -> str | None:  # a transformers model: its attributes are dynamic
    """None when ``model`` (a decoder ``…ForSequenceClassification``) can run a shared forward,
    else the reason it cannot: it needs a ``score`` head over a base model that takes a cache,
    position ids and a 4D mask, and full (not sliding-window) attention in every layer."""
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    if base is None or not isinstance(getattr(model, "score", None), torch.nn.Module):
        return "no base model + score head"
    params = inspect.signature(base.forward).parameters
    if "position_ids" not in params or not ({"cache", "past_key_values"} & set(params)):
        return "the base model takes no cache or position ids"
    cfg = model.config
    if getattr(cfg, "_attn_implementation", "eager") not in ("eager", "sdpa"):
        return f"attention implementation {cfg._attn_implementation!r} takes no 4D mask"
    types = getattr(cfg, "layer_types", None) or []
    if any(t != "full_attention" for t in types) or (
        getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True)
    ):
        return "sliding-window attention"
    return None


def _cache_kwarg(base: Any) -> str:
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def shared_forward(
    model: Any,
    batch: Sequence[Encoded],
    p: PrefixPlan,
    pad_id: int,
    device: torch.device,
    multiple: int = 1,
    max_length: int | None = None,
    max_padding: float = 1.0,
) -> tuple[list[int], torch.Tensor]:
    """(items, their rewards) of a decoder sequence classifier over the items of ``p.groups``, each
    group's prefix run once (``p.rest`` is left to a plain forward). The suffixes run on the prefix
    cache in chunks of similar length (``suffix_chunks`` with ``max_padding``)."""
    base = getattr(model, model.base_model_prefix)
    kw = _cache_kwarg(base)
    items = [i for members in p.groups for i in members]
    group_of = [g for g, members in enumerate(p.groups) for _ in members]
    k = len(p.groups)
    # 1. prefixes, one row per group, right-padded
    pw = padded_width(p.prefix_lens, multiple, max_length)
    pre_ids = torch.full((k, pw), pad_id, dtype=torch.long)
    pre_mask = torch.zeros((k, pw), dtype=torch.long)
    for g, members in enumerate(p.groups):
        P = p.prefix_lens[g]
        pre_ids[g, :P] = torch.tensor(batch[members[0]].input_ids[:P], dtype=torch.long)
        pre_mask[g, :P] = 1
    out = base(input_ids=pre_ids.to(device), attention_mask=pre_mask.to(device), use_cache=True)
    prefix_cache = getattr(out, kw, None)
    if prefix_cache is None:
        prefix_cache = out.past_key_values
    pre_hidden = out.last_hidden_state
    dtype = pre_hidden.dtype
    suffix = [batch[i].input_ids[p.prefix_lens[g] :] for i, g in zip(items, group_of)]
    chunks = suffix_chunks([len(s) for s in suffix], max_padding)
    rewards = torch.empty(len(items), dtype=dtype, device=device)
    limit = max_length or (1 << 30)
    for c, rows_of in enumerate(chunks):
        # 2. one cache row per item of the chunk (the last chunk may consume the prefix cache)
        cache = prefix_cache if c == len(chunks) - 1 else copy.deepcopy(prefix_cache)
        cache.batch_select_indices(torch.tensor([group_of[r] for r in rows_of], dtype=torch.long, device=device))
        # 3. suffixes on top: position ids continue each item's prefix; a 4D additive mask lets token j
        # of an item see its group's real prefix tokens and its own suffix tokens up to j
        n = len(rows_of)
        sw = padded_width([len(suffix[r]) for r in rows_of], multiple, max_length)
        ids = torch.full((n, sw), pad_id, dtype=torch.long)
        pos = torch.zeros((n, sw), dtype=torch.long)
        allowed = torch.zeros((n, sw, pw + sw), dtype=torch.bool)
        causal = torch.ones((sw, sw), dtype=torch.bool).tril()
        for row, r in enumerate(rows_of):
            s, P = suffix[r], p.prefix_lens[group_of[r]]
            ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
            pos[row] = (torch.arange(sw) + P).clamp(max=max(limit - 1, P))
            allowed[row, :, :P] = True  # the group's real prefix tokens
            allowed[row, :, pw : pw + len(s)] = causal[:, : len(s)]  # its own real suffix tokens, causally
        mask = torch.zeros((n, 1, sw, pw + sw), dtype=dtype)
        mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
        hidden = base(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=pos.to(device),
            use_cache=True,
            **{kw: cache},
        ).last_hidden_state
        # 4. the reward at each item's pooling position, from the prefix or the suffix hidden states
        picked = []
        for row, r in enumerate(rows_of):
            at, P = pool_index(batch[items[r]].input_ids, pad_id), p.prefix_lens[group_of[r]]
            picked.append(hidden[row, at - P] if at >= P else pre_hidden[group_of[r], at])
        rewards[rows_of] = model.score(torch.stack(picked)).reshape(n)
    return items, rewards
