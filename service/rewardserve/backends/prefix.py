"""Prompt-prefix sharing for decoder reward models: a group's prompt runs once, its responses on top.

A decoder reads causally, so the hidden states and key/value cache of a prompt's tokens are the same
for every response to it. Items of a batch whose first ``prefix_len`` tokens are identical form a
group; one forward runs each group's prefix (one row per group) and keeps its cache (one row per
group), and a second forward runs every item's remaining tokens (its suffix) on top of its group's
prefix, with position ids continuing the prefix and a 4D mask (built on the device from the
lengths) that hides the other groups' padding. The reward is read where the plain forward reads it
(the item's rightmost non-pad token), through the score head in float32, so the result is the plain
forward's up to the rounding of the hidden states (exact in float32: |Δ| ≤ 1e-4; in bfloat16 see
docs/configuration.md).

The planning (which items group: ``plan``) is pure; whether sharing computes fewer tokens than a
plain batch, and what a batch costs in memory, are cost.py's (``TokenCount``, ``CostModel``; re-exported
here); ``shared_forward`` runs the plan.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .base import Encoded, padded_width
from .cost import CostModel, TokenCount, batch_cost, computed_tokens, prefix_key

__all__ = [  # the cost model lives in cost.py; re-exported here
    "CostModel",
    "PrefixPlan",
    "TokenCount",
    "batch_cost",
    "computed_tokens",
    "has_score_head",
    "plan",
    "pool_index",
    "prefix_key",
    "score_fp32",
    "shared_forward",
    "suffix_chunks",
    "suffix_mask",
    "supports_sharing",
]


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


def has_score_head(model: Any) -> bool:
    """Whether ``model`` is a base model + a linear ``score`` head (decoder ``…ForSequenceClassification``)."""
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    return base is not None and isinstance(getattr(model, "score", None), torch.nn.Linear)


def supports_sharing(model: Any) -> str | None:  # a transformers model: its attributes are dynamic
    """None when ``model`` (a decoder ``…ForSequenceClassification``) can run a shared forward,
    else the reason it cannot: it needs a ``score`` head over a base model that takes a cache,
    position ids and a 4D mask, and full (not sliding-window) attention in every layer."""
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    # a score head: linear, or a module of its own over the pooled state (a judge's yes/no head)
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


def score_fp32(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """The reward from pooled hidden states, in float32 whatever the model's dtype: a bf16 score
    head rounds rewards to bf16's spacing (0.0625 for |r| in 8–16), which ties items of a GRPO
    group and makes a reward depend on its batch. One row per item: the cost is nothing."""
    head = model.score
    if not isinstance(head, torch.nn.Linear):  # a head of its own (a judge's yes/no head) computes in float32
        computed: torch.Tensor = head(hidden.float())
        return computed
    bias = head.bias.float() if getattr(head, "bias", None) is not None else None
    out: torch.Tensor = torch.nn.functional.linear(hidden.float(), head.weight.float(), bias)
    return out


def _prefix_cache_class() -> tuple[type, type]:
    """``(Cache, SharedPrefixLayer)``: a cache layer that holds a group's prompt keys/values once
    and gives attention each item's prompt + suffix keys/values for the layer being run, without
    keeping them (transformers' cache layers keep every layer's concatenation until the forward
    ends: items × (prompt + suffix) × layers)."""
    from transformers.cache_utils import Cache, DynamicLayer

    class SharedPrefixLayer(DynamicLayer):  # type: ignore[no-untyped-call]  # transformers' __init_subclass__
        def __init__(self, keys: torch.Tensor, values: torch.Tensor, spans: list[tuple[int, int, int]]):
            super().__init__()  # type: ignore[no-untyped-call]
            # one row per group; spans: (group, first row, end row) of the chunk's items
            self.keys, self.values, self.spans = keys, values, spans
            self._pk, self._pv = keys, values
            self.is_initialized, self.device = True, keys.device

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            return self._join(self._pk, key_states), self._join(self._pv, value_states)

        def _join(self, prefix: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
            n, heads, s, d = new.shape
            pw = prefix.shape[-2]
            out = new.new_empty((n, heads, pw + s, d))
            for g, a, b in self.spans:  # the group's row broadcast into its items' rows (a view: no copy of its own)
                out[a:b, :, :pw] = prefix[g : g + 1]
            out[:, :, pw:] = new
            return out

    return Cache, SharedPrefixLayer


def _layer_kv(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))  # transformers < 4.56


def suffix_mask(
    prefix_lens: torch.Tensor, suffix_lens: torch.Tensor, pw: int, sw: int, dtype: torch.dtype | None
) -> torch.Tensor:
    """The 4D attention mask of a chunk of suffixes, built on their device from the lengths: token j
    of row r sees its group's real prefix tokens (< prefix_lens[r]) and its own real suffix tokens up
    to j (causal). Boolean (True: attend) for SDPA; additive in ``dtype`` when given (eager)."""
    dev = prefix_lens.device
    k = torch.arange(pw + sw, device=dev)
    q = torch.arange(sw, device=dev)
    in_prefix = k[None, None, :] < prefix_lens[:, None, None]
    ks = (k - pw)[None, None, :]
    in_suffix = (ks >= 0) & (ks <= q[None, :, None]) & (ks < suffix_lens[:, None, None])
    allowed = (in_prefix | in_suffix)[:, None]
    if dtype is None:
        return allowed
    mask = torch.zeros(allowed.shape, dtype=dtype, device=dev)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


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
    """(items, their float32 rewards) of a decoder sequence classifier over the items of
    ``p.groups``, each group's prefix run once (``p.rest`` is left to a plain forward). The suffixes
    run on the prefix cache in chunks of similar length (``suffix_chunks`` with ``max_padding``).

    Memory: the prefix cache holds one row per group; a chunk's items get their group's keys and
    values broadcast into the attention input of one layer at a time (SDPA with a mask needs one
    key/value row per item: that copy is the only one), never a per-item cache over every layer."""
    base = getattr(model, model.base_model_prefix)
    kw = _cache_kwarg(base)
    Cache, SharedPrefixLayer = _prefix_cache_class()
    eager = getattr(model.config, "_attn_implementation", "eager") == "eager"
    items = [i for members in p.groups for i in members]
    group_of = [g for g, members in enumerate(p.groups) for _ in members]
    k = len(p.groups)
    # 1. prefixes, one row per group, right-padded
    pw = padded_width(p.prefix_lens, multiple, max_length)
    pre_ids = torch.full((k, pw), pad_id, dtype=torch.long)
    for g, members in enumerate(p.groups):
        P = p.prefix_lens[g]
        pre_ids[g, :P] = torch.tensor(batch[members[0]].input_ids[:P], dtype=torch.long)
    plens = torch.tensor(p.prefix_lens, dtype=torch.long).to(device)
    pre_mask = (torch.arange(pw, device=device)[None, :] < plens[:, None]).long()
    out = base(input_ids=pre_ids.to(device), attention_mask=pre_mask, use_cache=True)
    prefix_cache = getattr(out, kw, None)
    if prefix_cache is None:
        prefix_cache = out.past_key_values
    layer_kv = _layer_kv(prefix_cache)
    pre_hidden = out.last_hidden_state
    del out, prefix_cache  # the layers' prefix keys/values live on in layer_kv only
    suffix = [batch[i].input_ids[p.prefix_lens[g] :] for i, g in zip(items, group_of)]
    chunks = suffix_chunks([len(s) for s in suffix], max_padding)
    rewards = torch.empty(len(items), dtype=torch.float32, device=device)
    limit = max_length or (1 << 30)
    for rows_of in chunks:
        rows_of = sorted(rows_of, key=lambda r: group_of[r])  # a group's items side by side: one span each
        spans: list[tuple[int, int, int]] = []
        for row, r in enumerate(rows_of):
            if spans and spans[-1][0] == group_of[r]:
                spans[-1] = (group_of[r], spans[-1][1], row + 1)
            else:
                spans.append((group_of[r], row, row + 1))
        cache = Cache(layers=[SharedPrefixLayer(kk, vv, spans) for kk, vv in layer_kv])
        # 2. suffixes on top: position ids continue each item's prefix; the 4D mask from the lengths
        n = len(rows_of)
        lens = [len(suffix[r]) for r in rows_of]
        sw = padded_width(lens, multiple, max_length)
        ids = torch.full((n, sw), pad_id, dtype=torch.long)
        for row, r in enumerate(rows_of):
            ids[row, : lens[row]] = torch.tensor(suffix[r], dtype=torch.long)
        prow = plens[torch.tensor([group_of[r] for r in rows_of], dtype=torch.long).to(device)]
        srow = torch.tensor(lens, dtype=torch.long).to(device)
        pos = torch.minimum(
            torch.arange(sw, device=device)[None, :] + prow[:, None], prow.clamp(min=limit - 1)[:, None]
        )
        mask = suffix_mask(prow, srow, pw, sw, pre_hidden.dtype if eager else None)
        hidden = base(
            input_ids=ids.to(device), attention_mask=mask, position_ids=pos, use_cache=True, **{kw: cache}
        ).last_hidden_state
        # 3. the reward at each item's pooling position, from the prefix or the suffix hidden states
        picked = []
        for row, r in enumerate(rows_of):
            at, Pr = pool_index(batch[items[r]].input_ids, pad_id), p.prefix_lens[group_of[r]]
            picked.append(hidden[row, at - Pr] if at >= Pr else pre_hidden[group_of[r], at])
        rewards[rows_of] = score_fp32(model, torch.stack(picked)).reshape(n)
    return items, rewards
