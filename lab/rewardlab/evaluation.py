"""``rewardserve eval-rm``: pairwise accuracy of a configured model on preference pairs.

Scores go through the service's own path to raw rewards (``BackboneRegistry`` → backbone → batcher
→ backend), in process, so the numbers are those the service would return.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rewardserve.config import Settings
from rewardserve.metrics import Metrics
from rewardserve.registry import BackboneRegistry, ScoreInput

from .datasets import file_sha256, load_pairs


@asynccontextmanager
async def local_scorer(settings: Settings, models: list[str] | None = None) -> AsyncIterator[BackboneRegistry]:
    """A ``BackboneRegistry`` with the backbones serving ``models`` (default: all) loaded in this process."""
    wanted = set(models or settings.model_names())
    unknown = wanted - set(settings.model_names())
    if unknown:
        raise ValueError(f"unknown model(s) {sorted(unknown)}; configured: {settings.model_names()}")
    registry = BackboneRegistry(settings, Metrics())
    try:
        await registry.load([n for n, cfg in settings.backbones.items() if wanted & set(cfg.models)], warmup=False)
        yield registry
    finally:
        await registry.stop()


async def raw_rewards(registry: BackboneRegistry, pairs: list[tuple], models: list[str]) -> np.ndarray:
    """Raw rewards of (prompt, response) pairs (rows) for ``models`` (columns)."""
    return (await registry.raw_rewards([ScoreInput(p, r) for p, r in pairs], models)).raw


async def _score_pairs(registry: BackboneRegistry, model: str, texts: list[tuple], chunk: int = 256) -> np.ndarray:
    out = np.zeros(len(texts))
    with tqdm(total=len(texts), desc=f"scoring with {model}", unit="text") as bar:
        for s in range(0, len(texts), chunk):
            out[s : s + chunk] = (await raw_rewards(registry, texts[s : s + chunk], [model]))[:, 0]
            bar.update(len(texts[s : s + chunk]))
    return out


def pairwise_metrics(
    chosen: np.ndarray, rejected: np.ndarray, len_chosen: np.ndarray, len_rejected: np.ndarray
) -> dict:
    margin = chosen - rejected
    balanced = len_chosen <= len_rejected  # length-balanced pairs: the chosen reply is not longer
    rewards = np.concatenate([chosen, rejected])
    lengths = np.concatenate([len_chosen, len_rejected]).astype(float)
    return {
        "pairs": int(len(margin)),
        "accuracy": float(np.mean(margin > 0)),
        "mean_margin": float(np.mean(margin)),
        "length_balanced_pairs": int(balanced.sum()),
        "length_balanced_accuracy": float(np.mean(margin[balanced] > 0)) if balanced.any() else None,
        "reward_length_correlation": float(np.corrcoef(rewards, lengths)[0, 1]) if np.std(lengths) > 0 else None,
        "length_baseline_accuracy": float(np.mean(len_chosen > len_rejected)),
    }


CALIBRATION_BINS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def reliability(margin: np.ndarray, bins: tuple[float, ...] = CALIBRATION_BINS) -> dict:
    """Calibration of the Bradley–Terry probability σ(r_chosen − r_rejected). Each pair is read from
    the side the model favours: confidence q = σ(|margin|) ∈ [0.5, 1], and the pair counts as right
    when the favoured reply is the chosen one. Per confidence bin: pairs, mean q, empirical rate;
    ECE = Σ (n_bin / n) · |rate − mean q|."""
    q = 1.0 / (1.0 + np.exp(-np.abs(margin)))
    right = margin > 0
    rows, ece = [], 0.0
    for lo, hi in zip(bins[:-1], bins[1:]):
        sel = (q >= lo) & ((q < hi) if hi < bins[-1] else (q <= hi))
        n = int(sel.sum())
        mean_q = float(q[sel].mean()) if n else None
        rate = float(right[sel].mean()) if n else None
        row = {"bin": [lo, hi], "pairs": n, "mean_probability": mean_q, "empirical_rate": rate}
        if rate is not None and mean_q is not None:  # n > 0
            ece += n / len(margin) * abs(rate - mean_q)
        rows.append(row)
    return {
        "bins": rows,
        "ece": float(ece),
        "mean_bt_probability_of_chosen": float(np.mean(1.0 / (1.0 + np.exp(-margin)))),
    }


def bootstrap_intervals(
    chosen: np.ndarray,
    rejected: np.ndarray,
    len_chosen: np.ndarray,
    len_rejected: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Percentile bootstrap intervals (pairs resampled with replacement, seeded) for the headline
    metrics and the per-bin calibration rates."""
    rng = np.random.default_rng(seed)
    n = len(chosen)
    keys = ("accuracy", "length_balanced_accuracy", "reward_length_correlation", "mean_margin")
    draws: dict[str, list[float]] = {k: [] for k in (*keys, "ece")}
    bin_rates: list[list[float]] = [[] for _ in CALIBRATION_BINS[:-1]]
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        m = pairwise_metrics(chosen[i], rejected[i], len_chosen[i], len_rejected[i])
        for k in keys:
            if m[k] is not None:
                draws[k].append(m[k])
        rel = reliability(chosen[i] - rejected[i])
        draws["ece"].append(rel["ece"])
        for b, row in enumerate(rel["bins"]):
            if row["empirical_rate"] is not None:
                bin_rates[b].append(row["empirical_rate"])
    a = (1 - level) / 2 * 100

    def ci(v: list[float]) -> list[float] | None:
        return [float(np.percentile(v, a)), float(np.percentile(v, 100 - a))] if v else None

    return {
        "level": level,
        "resamples": n_boot,
        "seed": seed,
        **{k: ci(v) for k, v in draws.items()},
        "calibration_empirical_rate": [ci(v) for v in bin_rates],
    }


async def eval_rm(
    settings: Settings,
    model: str,
    data: str,
    limit: int | None = None,
    bootstrap: int = 1000,
    scores_out: str | None = None,
) -> dict:
    pairs = load_pairs(data, limit)
    texts = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    async with local_scorer(settings, [model]) as scorer:
        scores = await _score_pairs(scorer, model, texts)
        revision = scorer.models[model].revision
    n = len(pairs)
    lc, lr = np.array([len(p.chosen) for p in pairs]), np.array([len(p.rejected) for p in pairs])
    result = pairwise_metrics(scores[:n], scores[n:], lc, lr)
    result["calibration"] = reliability(scores[:n] - scores[n:])
    if bootstrap:
        result["intervals"] = bootstrap_intervals(scores[:n], scores[n:], lc, lr, bootstrap)
    if scores_out:
        np.savez_compressed(scores_out, chosen=scores[:n], rejected=scores[n:], len_chosen=lc, len_rejected=lr)
    path = Path(data).expanduser()
    return {
        "model": model,
        "revision": revision,
        "data": str(data),
        "data_sha256": file_sha256(path) if path.exists() else None,
        **result,
    }


def update_card(settings: Settings, model: str, result: dict, key: str = "test") -> Path:
    """Write ``result`` into the JSON card of an ``encoder_head`` model under ``evaluation[key]``."""
    for cfg in settings.backbones.values():
        head = getattr(cfg.models[model], "head", None) if model in cfg.models else None  # checks have none
        if head:
            card_path = Path(settings.resolve_path(head)).with_suffix(".json")
            card: dict[str, Any] = json.loads(card_path.read_text()) if card_path.exists() else {"name": model}
            card.setdefault("evaluation", {})[key] = result
            card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
            return card_path
    raise ValueError(f"model {model!r} has no head card to update (only encoder_head models do)")
