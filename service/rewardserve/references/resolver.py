"""Where each item's reference r_ref comes from, for each model: the whole fallback chain.

Per (item, model), the first that applies:

1. ``inline``: the item's own ``reference`` for the model;
2. ``stored``: the reference set's entry for the prompt's fingerprint (a warning, or
   ``StaleReference`` under ``revision_mismatch: reject``, when another model revision made it);
3. ``set_default``: the set's default for the model (``SET_DEFAULT_FINGERPRINT``, written by
   calibration), when the model's policy is ``default``;
4. ``config_default``: the model's ``default_reference``, when its policy is ``default`` or its
   transform ignores the reference (``identity``);
5. else ``MissingReference`` (the model's ``missing_reference: error``, or the request's
   ``missing_reference: error`` for a model that needs a reference).

A reference-free model (a check) needs none: ``not_applicable``, with no store lookup. This module
knows the store and the rules only; the scoring pipeline calls it, never the other way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from rewardclient.protocol import Prompt, ReferenceSource

from .. import prompt_formats
from ..errors import MissingReference, StaleReference
from .base import SET_DEFAULT_FINGERPRINT, ReferenceStore

# sources that are a reference for the prompt itself (p_all_good is a probability only against those)
REAL_SOURCES: frozenset[ReferenceSource] = frozenset({"inline", "stored", "not_applicable"})


@dataclass(frozen=True, slots=True)
class ResolvedReference:
    value: float
    source: ReferenceSource
    warning: str | None = None


@dataclass(frozen=True, slots=True)
class ReferenceRule:
    """What the chain needs to know of one model."""

    model: str
    revision: str
    default_reference: float = 0.0
    missing_reference: Literal["default", "error"] = "default"
    transform: Literal["lsc", "identity", "none"] = "lsc"  # none: reference-free (not_applicable)


NOT_APPLICABLE = ResolvedReference(0.0, "not_applicable")


async def resolve_references(
    store: ReferenceStore,
    rules: Sequence[ReferenceRule],
    prompts: Sequence[Prompt],
    inline: Sequence[Mapping[str, float] | None],
    reference_set: str,
    missing_reference: Literal["error"] | None = None,
    revision_mismatch: Literal["warn", "reject"] = "warn",
) -> list[list[ResolvedReference]]:
    """One record per item (rows, in ``prompts`` order) and model (columns, in ``rules`` order);
    one store round trip per model that has items without an inline reference."""
    out: list[list[ResolvedReference]] = [[NOT_APPLICABLE] * len(rules) for _ in prompts]
    fps: list[str] | None = None
    for j, rule in enumerate(rules):
        if rule.transform == "none":
            continue
        missing = []
        for i, refs in enumerate(inline):
            if refs is not None and rule.model in refs:
                out[i][j] = ResolvedReference(float(refs[rule.model]), "inline")
            else:
                missing.append(i)
        if not missing:
            continue
        if fps is None:
            if prompt_formats.is_small(prompts):
                fps = [prompt_formats.fingerprint(p) for p in prompts]
            else:  # linear, but long: off the event loop
                fps = await asyncio.to_thread(lambda: [prompt_formats.fingerprint(p) for p in prompts])
        wanted = sorted({fps[i] for i in missing}) + [SET_DEFAULT_FINGERPRINT]
        stored = await store.get_many(rule.model, wanted, reference_set)
        set_default = stored.get(SET_DEFAULT_FINGERPRINT)
        needs = rule.transform == "lsc"
        policy = "error" if missing_reference == "error" and needs else rule.missing_reference
        for i in missing:
            ref = stored.get(fps[i])
            if ref is not None:
                warning = None
                if ref.revision and ref.revision != rule.revision:
                    warning = (
                        f"the stored reference for model {rule.model!r} was made with model revision "
                        f"{ref.revision}; the model is now {rule.revision}"
                    )
                    if revision_mismatch == "reject":
                        raise StaleReference(f"items[{i}]: {warning}; recalibrate or pass items[{i}].reference")
                out[i][j] = ResolvedReference(ref.value, "stored", warning)
            elif set_default is not None and policy == "default":
                out[i][j] = ResolvedReference(set_default.value, "set_default")
            elif policy == "default" or not needs:
                out[i][j] = ResolvedReference(rule.default_reference, "config_default")
            else:
                why = "the request's" if missing_reference == "error" else "the model's"
                raise MissingReference(
                    f"items[{i}]: no reference for model {rule.model!r} and prompt fingerprint {fps[i]} in reference "
                    f"set {reference_set!r} ({why} missing_reference is 'error'); pass items[{i}].reference or "
                    "store one via POST /v1/references"
                )
    return out
