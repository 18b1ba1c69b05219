"""Small statistics helpers (no numpy, so the load generator starts fast)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks (the
    default method of ``numpy.percentile``); ``None`` for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within [0, 100], got {q}")
    xs = sorted(values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    frac = pos - lo
    return xs[lo] + (xs[hi] - xs[lo]) * frac


def summarize_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    """Latency summary in milliseconds: p50, p90, p99, mean, max (``None`` when empty)."""
    ms = [s * 1000.0 for s in seconds]
    if not ms:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "max": None}
    return {
        "p50": percentile(ms, 50),
        "p90": percentile(ms, 90),
        "p99": percentile(ms, 99),
        "mean": sum(ms) / len(ms),
        "max": max(ms),
    }


def emit_json(result: dict, out: str | None) -> None:
    """Write a worker process's result as one JSON document to ``out``, or to stdout."""
    import json
    import sys

    text = json.dumps(result)
    if out:
        with open(out, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text + "\n")


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """A distribution-free interval for the median: the order statistics (x_(k), x_(n−k+1)) with the
    largest k whose coverage 1 − 2·P(Binomial(n, ½) < k) is at least ``confidence``; ``None`` when
    n is too small for that coverage (n ≤ 5 at 95 %)."""
    xs = sorted(values)
    n = len(xs)
    below = 0.0  # P(Binomial(n, 1/2) < k), as k grows
    k = 0
    while True:
        tail = below + math.comb(n, k) / 2**n
        if 1 - 2 * tail < confidence:
            break
        below, k = tail, k + 1
    if k == 0:
        return None
    return xs[k - 1], xs[n - k]
