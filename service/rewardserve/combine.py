"""From raw rewards to log P(good): per-model transforms, the aggregate and p_all_good (pure, float64).

Every served model says how its raw reward becomes a log-probability of "good" (``Transform``):

- ``lsc`` (reward models, judges): u = log σ(r − r_ref), against a reference (``lsc.py``);
- ``check`` (verifiers; reference-free): u = log(ε + (1 − ε)·s) for a score s in [0, 1], so a
  failed check is log ε, never −∞;
- ``identity``: u = r, the raw reward as it is (not a probability).

``combine`` applies them and aggregates each item. ``p_all_good`` = exp(Σ u_m) is given only where
it is a probability: an unweighted ``lsc_sum`` over log-probability transforms, with every
reference real for the prompt (inline, stored, or not needed).

A raw reward of NaN means "skipped" (a check under ``missing_label: skip`` for an item without a
label): that model's ``raw`` and ``transformed`` are None, it is left out of the item's aggregate,
and the item has no ``p_all_good`` (the AND is not over every model asked for).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from rewardclient.protocol import AggregateMethod

from . import lsc

TransformKind = Literal["lsc", "identity", "check"]
CHECK_EPSILON = 1e-3  # a failed check: log(1e-3) ≈ −6.9


@dataclass(frozen=True, slots=True)
class Transform:
    """How a model's raw reward becomes u = log P(good) (see the module docstring)."""

    kind: TransformKind = "lsc"
    epsilon: float = CHECK_EPSILON  # check only

    def __post_init__(self) -> None:
        if self.kind == "check" and not 0.0 < self.epsilon < 1.0:
            raise ValueError(f"a check's epsilon must be in (0, 1), got {self.epsilon}")

    @property
    def uses_reference(self) -> bool:
        return self.kind != "check"

    @property
    def log_probability(self) -> bool:
        return self.kind != "identity"

    def apply(self, raw: np.ndarray, reference: np.ndarray) -> np.ndarray:
        if self.kind == "check":
            score = np.clip(np.asarray(raw, dtype=np.float64), 0.0, 1.0)
            out: np.ndarray = np.log(self.epsilon + (1.0 - self.epsilon) * score)
            return out
        return lsc.transform(raw, reference, self.kind)


@dataclass(frozen=True, slots=True)
class Combined:
    """One item's rewards, per model name, and its aggregate."""

    raw: dict[str, float | None]  # None: skipped (left out of the aggregate)
    reference: dict[str, float]
    transformed: dict[str, float | None]
    aggregate: float
    p_all_good: float | None


def p_all_good_defined(method: AggregateMethod, weights: Mapping[str, float], transforms: Sequence[Transform]) -> bool:
    """Whether exp(aggregate) is a probability: unit-weight ``lsc_sum`` of log-probabilities."""
    return (
        method == "lsc_sum"
        and all(float(v) == 1.0 for v in weights.values())
        and all(t.log_probability for t in transforms)
    )


def combine(
    names: Sequence[str],
    transforms: Sequence[Transform],
    raw: np.ndarray,
    reference: np.ndarray,
    real_reference: np.ndarray,
    method: AggregateMethod,
    weights: Mapping[str, float],
) -> list[Combined]:
    """Per item (rows of ``raw``, ``reference``; columns: ``names``): transform, aggregate, and
    p_all_good where defined (``real_reference[i, j]``: item i's reference for model j is real)."""
    u = np.empty_like(raw, dtype=np.float64)
    for j, t in enumerate(transforms):
        u[:, j] = t.apply(raw[:, j], reference[:, j])
    with_p = p_all_good_defined(method, weights, transforms)
    out = []
    for i, (r_row, ref_row, u_row) in enumerate(zip(raw.tolist(), reference.tolist(), u.tolist())):
        kept = [j for j, r in enumerate(r_row) if not math.isnan(r)]  # NaN: skipped
        r_i = {names[j]: r_row[j] for j in kept}
        u_i = {names[j]: u_row[j] for j in kept}
        value = lsc.aggregate(r_i, u_i, method, weights) if kept else 0.0
        whole = len(kept) == len(names) and bool(real_reference[i].all())
        p = math.exp(value) if with_p and whole else None
        raw_out = {m: r_i.get(m) for m in names}
        u_out = {m: u_i.get(m) for m in names}
        out.append(Combined(raw_out, dict(zip(names, ref_row)), u_out, value, p))
    return out
