"""The scoring pipeline: the path of one ``POST /v1/score`` after the route has parsed it.

    normalise prompts ─┬─ resolve references (references/resolver.py) ─┬─ combine ─► ScoreOutcome
                       └─ registry raw rewards (registry/) ────────────┘  (combine.py)

The two middle steps run side by side: the store round trip overlaps the forward. The core builds
no wire types: the route turns the ``ScoreOutcome`` into its response. What can go wrong is a
domain error (``errors.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from rewardclient.protocol import DEFAULT_AGGREGATE, AggregateMethod, Prompt, ReferenceSource

from .combine import combine
from .config import Settings
from .errors import InvalidInput, TextTooLong, TooManyItems
from .limits import check_messages
from .metrics import Metrics
from .normalise import Normaliser
from .references import DEFAULT_SET, ReferenceStore
from .references.resolver import ResolvedReference, resolve_references
from .registry import BackboneRegistry, ScoreInput

FALLBACK_SOURCES = ("set_default", "config_default")  # counted in rewardserve_reference_fallbacks


@dataclass(frozen=True, slots=True)
class Item:
    prompt: Prompt
    response: str
    id: str | None = None
    reference: Mapping[str, float] | None = None  # inline r_ref per model
    label: object = field(default=None, repr=False)  # ground truth for checks; never logged, never echoed


@dataclass(frozen=True)
class ScoreRequest:
    items: Sequence[Item]
    models: Sequence[str] | None = None  # default: every served model
    method: AggregateMethod = DEFAULT_AGGREGATE
    weights: Mapping[str, float] | None = None  # per model, default 1
    prompt_format: str | None = None  # default: the service's
    reference_set: str = DEFAULT_SET
    missing_reference: Literal["error"] | None = None


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    id: str | None
    raw: dict[str, float | None]  # None: a model left out of this item (a check without its label, skipped)
    reference: dict[str, float]
    reference_source: dict[str, ReferenceSource]
    transformed: dict[str, float | None]
    aggregate: float
    p_all_good: float | None
    truncated: dict[str, bool]
    warnings: list[str]


@dataclass(frozen=True)
class ScoreOutcome:
    items: list[ItemOutcome]  # in request order
    method: AggregateMethod
    reference_set: str
    revisions: dict[str, str]  # per model asked for
    tokens: int
    timing: dict[str, float]  # seconds: encode, queue, forward (registry.RawRewards)


CHECK_INLINE_MAX = 1_000  # items and chat messages checked on the event loop; more: in a worker thread


class Scorer:
    def __init__(self, settings: Settings, registry: BackboneRegistry, store: ReferenceStore, metrics: Metrics):
        self.settings, self.registry, self.store, self.metrics = settings, registry, store, metrics
        self.normalise = Normaliser(settings)

    def check(self, req: ScoreRequest, names: Sequence[str]) -> None:
        lim = self.settings.limits
        unknown_w = [m for m in req.weights or {} if m not in names]
        if unknown_w:
            raise InvalidInput(
                f"aggregate.weights names model {unknown_w[0]!r}, which is not among the requested models {names}"
            )
        if len(req.items) > lim.max_items_per_request:
            raise TooManyItems(
                f"{len(req.items)} items; the limit (max_items_per_request) is {lim.max_items_per_request}"
            )
        check_messages("items", req.items, lim)
        for i, it in enumerate(req.items):
            p = it.prompt
            n = len(it.response) + (
                len(p) if isinstance(p, str) else sum(len(m["role"]) + len(m["content"]) for m in p)
            )
            if n > lim.max_text_chars:
                raise TextTooLong(f"items[{i}] has {n} characters; the limit (max_text_chars) is {lim.max_text_chars}")
            for m in it.reference or {}:
                if m not in self.registry.models:
                    raise InvalidInput(f"items[{i}].reference names unknown model {m!r}")

    async def score(self, req: ScoreRequest) -> ScoreOutcome:
        names = self.registry.select(req.models)
        if sum(len(it.prompt) if isinstance(it.prompt, list) else 1 for it in req.items) > CHECK_INLINE_MAX:
            await asyncio.to_thread(self.check, req, names)  # counts every message: off the event loop
        else:
            self.check(req, names)
        models = [self.registry.models[m] for m in names]
        norm = await self.normalise(
            [it.prompt for it in req.items], [it.response for it in req.items], req.prompt_format
        )
        # the reference lookup runs while the items wait for and run their forward; the first failure
        # fails the request and the other task is cancelled (its queued items are dropped)
        tasks = (
            asyncio.ensure_future(
                resolve_references(
                    self.store,
                    [m.reference_rule() for m in models],
                    [n.prompt for n in norm],
                    [it.reference for it in req.items],
                    req.reference_set,
                    req.missing_reference,
                    self.settings.references.revision_mismatch,
                )
            ),
            asyncio.ensure_future(
                self.registry.raw_rewards(
                    [ScoreInput(n.prompt, n.response, it.label) for n, it in zip(norm, req.items)], names
                )
            ),
        )
        try:
            refs, raw = await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()  # no-op once done
        self._count_fallbacks(names, refs)
        shape = (len(req.items), len(names))
        ref_values = np.array([[r.value for r in row] for row in refs], dtype=np.float64).reshape(shape)
        real = np.array(
            [[m.real_reference(r.source, r.value) for m, r in zip(models, row)] for row in refs], dtype=bool
        ).reshape(shape)
        transforms = [m.transform for m in models]
        combined = combine(names, transforms, raw.raw, ref_values, real, req.method, req.weights or {})
        items = []
        for i, (it, c) in enumerate(zip(req.items, combined)):
            warnings = [w for w in (norm[i].warning, *(r.warning for r in refs[i])) if w] + raw.warnings[i]
            items.append(
                ItemOutcome(
                    id=it.id,
                    raw=c.raw,
                    reference=c.reference,
                    reference_source={m: r.source for m, r in zip(names, refs[i])},
                    transformed=c.transformed,
                    aggregate=c.aggregate,
                    p_all_good=c.p_all_good,
                    truncated=dict(zip(names, raw.truncated[i].tolist())),
                    warnings=warnings,
                )
            )
        revisions = {m.name: m.revision for m in models}
        return ScoreOutcome(items, req.method, req.reference_set, revisions, raw.tokens, raw.timing)

    def _count_fallbacks(self, names: Sequence[str], refs: Sequence[Sequence[ResolvedReference]]) -> None:
        """Count items of LSC models scored against a default instead of a reference of their own."""
        for j, m in enumerate(names):
            if self.registry.models[m].transform.kind != "lsc":
                continue
            for src in FALLBACK_SOURCES:
                n = sum(1 for row in refs if row[j].source == src)
                if n:
                    self.metrics.reference_fallbacks.labels(m, src).inc(n)
