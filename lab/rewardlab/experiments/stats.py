"""Pure statistics of the experiments: bootstrap intervals and best-of-k selection.

Arrays: ``cand`` (prompts × n candidates × models) raw rewards of the candidate samples, ``ref``
(prompts × models) reference rewards, ``lengths`` (prompts × n) candidate lengths in tokens.
"""

from __future__ import annotations

import numpy as np

from rewardserve import lsc


def bootstrap_ci(values, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Mean of ``values`` and its percentile-bootstrap (1 − alpha) interval, resampling the values."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return {"mean": float(v.mean()), "lo": float(lo), "hi": float(hi), "n": int(v.size)}


def references(calib: np.ndarray, q: float) -> np.ndarray:
    """Per prompt and model: the q-quantile of the calibration samples' raw rewards (prompts × K × models)."""
    return np.array(
        [[lsc.quantile(calib[i, :, m].tolist(), q) for m in range(calib.shape[2])] for i in range(calib.shape[0])]
    )


def utilities(cand: np.ndarray, ref: np.ndarray, method: str) -> np.ndarray:
    """The aggregate each candidate is ranked by (prompts × n): ``raw_sum`` or ``lsc_sum``."""
    if method == "raw_sum":
        return cand.sum(axis=2)
    if method == "lsc_sum":
        return lsc.transform(cand, ref[:, None, :], "lsc").sum(axis=2)
    raise ValueError(f"unknown method {method!r}")


def pick(cand: np.ndarray, ref: np.ndarray, method: str, k: int) -> np.ndarray:
    """Index of the best of the first ``k`` candidates per prompt (first one on ties)."""
    return np.argmax(utilities(cand[:, :k], ref, method), axis=1)


def worst_decile(cand: np.ndarray, ref: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Per model, a mask (prompts × models) of the prompts whose mean candidate reward relative to the
    reference is in the lowest ``fraction``: where the base policy does worst."""
    quality = cand.mean(axis=1) - ref
    n = max(1, int(np.ceil(fraction * quality.shape[0])))
    mask = np.zeros_like(quality, dtype=bool)
    for m in range(quality.shape[1]):
        mask[np.argsort(quality[:, m], kind="stable")[:n], m] = True
    return mask


def per_prompt_metrics(
    cand: np.ndarray, ref: np.ndarray, lengths: np.ndarray, idx: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-prompt values of the picked candidates: raw reward per model, gain over the mean
    candidate per model, "good on all" (above the reference on every model), length."""
    rows = np.arange(cand.shape[0])
    picked = cand[rows, idx]  # prompts × models
    return {
        "raw": picked,
        "gain": picked - cand.mean(axis=1),
        "good_on_all": np.all(picked > ref, axis=1).astype(float),
        "length": lengths[rows, idx].astype(float),
    }
