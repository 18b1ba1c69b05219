"""Pure math of the KL-indexed curves: selection policies over a fixed pool of base samples.

For one prompt, the base policy's N samples y_1..y_N form a pool; a utility U assigns each a score.
Two ways to move away from the base policy, each with an exact KL:

- the KL-regularised optimum over the pool: π_β(y_i) ∝ exp(U(y_i)/β) against the uniform pool
  distribution (the maximiser of E_π[U] − β·KL(π ‖ uniform) over distributions on the pool), with
  KL(π_β ‖ uniform) = Σ_i π_i log(N π_i);
- best-of-n: the best of n draws (with replacement) from the pool; with the pool sorted by U, the
  candidate of rank i (1 = worst) is picked with probability (i/N)^n − ((i−1)/N)^n, and its KL is
  the standard log n − (n − 1)/n.

Every function works on arrays of shape (prompts × N) so that a curve is one call per β or n.
"""

from __future__ import annotations

import numpy as np


def tilted(u: np.ndarray, beta: float) -> np.ndarray:
    """π_β per prompt: softmax(u / β) along the last axis (stable; ties share mass equally)."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    z = np.asarray(u, dtype=float) / beta
    z = z - z.max(axis=-1, keepdims=True)
    w = np.exp(z)
    return w / w.sum(axis=-1, keepdims=True)


def kl_to_uniform(pi: np.ndarray) -> np.ndarray:
    """KL(π ‖ uniform over the pool) per prompt, in nats: Σ π log(N π) (0 log 0 = 0)."""
    pi = np.asarray(pi, dtype=float)
    n = pi.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(pi > 0, pi * np.log(n * pi), 0.0)
    return terms.sum(axis=-1)


def best_of_n_weights(u: np.ndarray, n: int) -> np.ndarray:
    """Probability that each pool member is the best of ``n`` uniform draws with replacement
    (prompts × N). Ties in ``u`` split their joint probability equally."""
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    u = np.asarray(u, dtype=float)
    N = u.shape[-1]
    out = np.zeros_like(u)
    for p in range(u.shape[0]):
        vals = u[p]
        # P(max of n draws ≤ v) = (#{u ≤ v}/N)^n; a group of equal values shares P(max == v)
        for v in np.unique(vals):
            le = np.count_nonzero(vals <= v)
            lt = np.count_nonzero(vals < v)
            members = vals == v
            out[p, members] = ((le / N) ** n - (lt / N) ** n) / members.sum()
    return out


def best_of_n_kl(n: int) -> float:
    """The analytic KL of best-of-n from the base policy: log n − (n − 1)/n."""
    return float(np.log(n) - (n - 1) / n)


def expect(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """E_π[values] per prompt (both prompts × N)."""
    return (np.asarray(weights) * np.asarray(values, dtype=float)).sum(axis=-1)


def win_rate(weights: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Per prompt: P(gold(y ~ π) > gold(y' ~ uniform pool)), ties counted half — the expected win rate
    of the selected response against a base sample, judged by the gold reward."""
    g = np.asarray(gold, dtype=float)
    beats = (g[:, :, None] > g[:, None, :]).mean(axis=2) + 0.5 * (g[:, :, None] == g[:, None, :]).mean(axis=2)
    return expect(weights, beats)


def beta_for_kl(u: np.ndarray, target_kl: float, lo: float = 1e-4, hi: float = 1e4, iters: int = 80) -> float:
    """The β whose mean KL over prompts is ``target_kl`` (bisection on log β; KL falls as β grows)."""

    def mean_kl(b: float) -> float:
        return float(kl_to_uniform(tilted(u, b)).mean())

    a, b = np.log(lo), np.log(hi)
    for _ in range(iters):
        mid = 0.5 * (a + b)
        if mean_kl(float(np.exp(mid))) > target_kl:
            a = mid
        else:
            b = mid
    return float(np.exp(0.5 * (a + b)))


def interpolate(kl: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """A curve's values at the KL points of ``grid`` (linear in KL; NaN outside the curve's range)."""
    kl, y, grid = (np.asarray(v, dtype=float) for v in (kl, y, grid))
    order = np.argsort(kl)
    kl, y = kl[order], y[order]
    out = np.interp(grid, kl, y)
    out[(grid < kl[0]) | (grid > kl[-1])] = np.nan
    return out


# -- the curves ------------------------------------------------------------------------------------
DEFAULT_KL_TARGETS = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0)
DEFAULT_BEST_OF = (1, 2, 4, 8, 16, 32)


def per_prompt_point(
    w: np.ndarray, proxy: np.ndarray, gold: np.ndarray, gold_ref: np.ndarray, lengths: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-prompt expected metrics of a selection ``w`` (prompts × N weights) over the pool.

    ``proxy`` and ``gold`` are raw rewards (prompts × N × models, the same models in the same order:
    proxy m is judged by gold m), ``gold_ref`` the gold references (prompts × models). Returns arrays
    over prompts: ``gold_win_rate`` and ``proxy_win_rate`` (prompts × models; against a base sample),
    ``overoptimisation`` = proxy win rate − gold win rate (what the proxy believes it gained beyond
    what the gold model confirms, in the same scale-free unit), ``gold_gain`` (E_w[gold] − pool mean,
    prompts × models), ``gold_good_on_all`` (P(every gold reward above its gold reference)),
    ``length`` and ``kl``.
    """
    M = gold.shape[2]
    gwin = np.stack([win_rate(w, gold[:, :, m]) for m in range(M)], axis=1)
    pwin = np.stack([win_rate(w, proxy[:, :, m]) for m in range(M)], axis=1)
    gain = np.stack([expect(w, gold[:, :, m]) - gold[:, :, m].mean(axis=1) for m in range(M)], axis=1)
    good = np.all(gold > gold_ref[:, None, :], axis=2).astype(float)
    return {
        "gold_win_rate": gwin,
        "proxy_win_rate": pwin,
        "overoptimisation": pwin - gwin,
        "gold_gain": gain,
        "gold_good_on_all": expect(w, good),
        "length": expect(w, lengths),
        "kl": kl_to_uniform(w),
    }


def selections(u: np.ndarray, kl_targets=DEFAULT_KL_TARGETS, best_of=DEFAULT_BEST_OF) -> list[dict]:
    """The points of one utility's curve: the tilted optimum at each target mean KL (β found by
    bisection, so every utility is evaluated at the same KLs) and best-of-n for each n."""
    pts = []
    for target in kl_targets:
        if target >= np.log(u.shape[1]):
            continue  # beyond the pool's reach (all mass on one sample)
        beta = beta_for_kl(u, target)
        pts.append({"beta": beta, "n": None, "target_kl": target, "weights": tilted(u, beta)})
    for n in best_of:
        pts.append({"beta": None, "n": n, "target_kl": best_of_n_kl(n), "weights": best_of_n_weights(u, n)})
    return pts
