"""``rewardserve eval-rm``: pairwise accuracy of a configured model on preference pairs.

Scores go through the service's own scoring path (``Scorer`` → batcher → backend), in process, so
the numbers are those the service would return.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .backends import build_backend
from .config import Settings
from .datasets import file_sha256, load_pairs
from .metrics import Metrics
from .references import open_store
from .scoring import Scorer


@asynccontextmanager
async def local_scorer(settings: Settings, models: list[str] | None = None, store_url: str | None = None) -> AsyncIterator[Scorer]:
    """A ``Scorer`` with the backbones serving ``models`` (default: all) loaded in this process."""
    wanted = set(models or settings.model_names())
    unknown = wanted - set(settings.model_names())
    if unknown:
        raise ValueError(f"unknown model(s) {sorted(unknown)}; configured: {settings.model_names()}")
    store = open_store(store_url or settings.references.store)
    scorer = Scorer(settings, store, Metrics())
    try:
        for name, cfg in settings.backbones.items():
            if wanted & set(cfg.models):
                await scorer.load_backbone(name, build_backend, warmup=False)
        yield scorer
    finally:
        await scorer.stop()
        await store.close()


async def _score_pairs(scorer: Scorer, model: str, texts: list[tuple], chunk: int = 256) -> np.ndarray:
    out = np.zeros(len(texts))
    with tqdm(total=len(texts), desc=f"scoring with {model}", unit="text") as bar:
        for s in range(0, len(texts), chunk):
            raw, _, _ = await scorer.raw_rewards(texts[s:s + chunk], [model])
            out[s:s + chunk] = raw[:, 0]
            bar.update(len(texts[s:s + chunk]))
    return out


def pairwise_metrics(chosen: np.ndarray, rejected: np.ndarray, len_chosen: np.ndarray, len_rejected: np.ndarray) -> dict:
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


async def eval_rm(settings: Settings, model: str, data: str, limit: int | None = None) -> dict:
    pairs = load_pairs(data, limit)
    texts = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    async with local_scorer(settings, [model]) as scorer:
        scores = await _score_pairs(scorer, model, texts)
        revision = scorer.models[model].info.revision
    n = len(pairs)
    result = pairwise_metrics(
        scores[:n], scores[n:], np.array([len(p.chosen) for p in pairs]), np.array([len(p.rejected) for p in pairs])
    )
    path = Path(data).expanduser()
    return {"model": model, "revision": revision, "data": str(data),
            "data_sha256": file_sha256(path) if path.exists() else None, **result}


def update_card(settings: Settings, model: str, result: dict, key: str = "test") -> Path:
    """Write ``result`` into the JSON card of an ``encoder_head`` model under ``evaluation[key]``."""
    for cfg in settings.backbones.values():
        if model in cfg.models and cfg.models[model].head:
            card_path = Path(settings.resolve_path(cfg.models[model].head)).with_suffix(".json")
            card = json.loads(card_path.read_text()) if card_path.exists() else {"name": model}
            card.setdefault("evaluation", {})[key] = result
            card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
            return card_path
    raise ValueError(f"model {model!r} has no head card to update (only encoder_head models do)")
