"""The reward math, as pure functions in float64.

- LSC transform (Wang et al., 2024, "Transforming and Combining Rewards for Aligning Large
  Language Models"): u = log sigmoid(r - r_ref) = -softplus(-(r - r_ref)). It is bounded above by
  0 and finite for every finite input.
- Aggregation over reward models: ``lsc_sum`` = sum_m w_m u_m (a logical AND: with unit weights it
  is log P(good on every property)), ``raw_sum`` = sum_m w_m r_m (the usual baseline), ``min`` =
  min_m w_m u_m (the worst property decides).
- Checks (verifiers): u = log(ε + (1 − ε)·s) for a check's score s in [0, 1] (``check_utility``):
  log P(good) with a floor, so a failed check contributes log ε to the AND instead of −∞.
- ``quantile``: the linear-interpolation quantile used for reference rewards.

Every number a client or operator gives (references, weights, set defaults, config defaults) is
bounded by ``rewardclient.protocol.MAX_ABS_VALUE`` (|x| ≤ 1e6): with rewards of any finite float32 model, each term
w·u and w·r stays far below float64's range, so an aggregate of up to 1e6 models cannot overflow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import numpy as np

from rewardclient.protocol import (
    AGGREGATE_METHODS,
    DEFAULT_AGGREGATE,
    AggregateMethod,
)

TransformKind = Literal["lsc", "identity"]


def log_sigmoid(x: float | np.ndarray) -> np.ndarray:
    """log σ(x) = -softplus(-x) = -log(1 + exp(-x)), stable for any finite x (float64)."""
    x = np.asarray(x, dtype=np.float64)
    out: np.ndarray = -np.logaddexp(0.0, -x)
    return out


def transform(raw: float | np.ndarray, reference: float | np.ndarray, kind: TransformKind = "lsc") -> np.ndarray:
    """Transformed reward u for raw reward r and reference r_ref.

    ``lsc``: u = log σ(r − r_ref); ``identity``: u = r (the reference is ignored).
    """
    raw = np.asarray(raw, dtype=np.float64)
    if kind == "lsc":
        return log_sigmoid(raw - np.asarray(reference, dtype=np.float64))
    if kind == "identity":
        return raw
    raise ValueError(f"unknown transform {kind!r}; expected 'lsc' or 'identity'")


def check_utility(raw: float | np.ndarray, eps: float) -> np.ndarray:
    """Transformed reward of a check: u = log(ε + (1 − ε)·raw), float64, in [log ε, 0] for raw in
    [0, 1]; ``raw`` is clipped to [0, 1] (NaN counts as 0) so u is always finite. ε in (0, 1)."""
    if not 0.0 < eps < 1.0:
        raise ValueError(f"epsilon must be in (0, 1), got {eps}")
    r = np.clip(np.nan_to_num(np.asarray(raw, dtype=np.float64), nan=0.0), 0.0, 1.0)
    out: np.ndarray = np.log(eps + (1.0 - eps) * r)
    return out


def aggregate(
    raw: Mapping[str, float],
    transformed: Mapping[str, float],
    method: AggregateMethod = DEFAULT_AGGREGATE,
    weights: Mapping[str, float] | None = None,
) -> float:
    """Aggregate one item's per-model rewards into one scalar.

    ``weights`` maps model name to weight; a model missing from it has weight 1.
    """
    names = list(transformed)
    w = {m: float((weights or {}).get(m, 1.0)) for m in names}
    if method == "lsc_sum":
        return math.fsum(w[m] * float(transformed[m]) for m in names)
    if method == "raw_sum":
        return math.fsum(w[m] * float(raw[m]) for m in names)
    if method == "min":
        return min(w[m] * float(transformed[m]) for m in names)
    raise ValueError(f"unknown aggregate method {method!r}; expected one of {', '.join(AGGREGATE_METHODS)}")


def p_all_good(lsc_sum: float) -> float:
    """P(the response is good on every property) = exp(Σ_m u_m), for unit-weight LSC sums."""
    return math.exp(lsc_sum)


def p_all_good_defined(method: str, weights: Mapping[str, float] | None, transforms: Iterable[str]) -> bool:
    """``p_all_good`` is a probability only for an unweighted sum of LSC-transformed rewards."""
    return (
        method == "lsc_sum"
        and all(float(v) == 1.0 for v in (weights or {}).values())
        and all(t == "lsc" for t in transforms)
    )


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default, "type 7").

    For sorted values v_0 ≤ … ≤ v_{n-1}: h = (n − 1)·q, result = v_⌊h⌋ + (h − ⌊h⌋)(v_⌊h⌋+1 − v_⌊h⌋).
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    v = sorted(float(x) for x in values)
    if not v:
        raise ValueError("quantile of an empty sequence")
    h = (len(v) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (h - lo) * (v[hi] - v[lo])
