"""``python -m rewardlab.training.length_control``: fit a head's length correction.

A Bradley–Terry model trained on a length-biased judge (AlpacaEval's GPT-4 prefers the longer
reply in 75 % of pairs) learns length. The correction served with the head is
r_c(x, y) = r(x, y) − β · chars(y), with β the least-squares slope of the reward on the reply's
length in characters over held-out replies, so that r_c and length are uncorrelated there: the
reward keeps what it knows beyond length (the length-controlled reading, as AlpacaEval's
length-controlled win rate regresses the judge's length preference out). β is fitted on the
validation split that fine-tuning held out (10 % of train pairs, grouped by the first user
message, same seed), never on test pairs; the head file gets ``length_coef`` in its metadata (so
its digest and the served revision change) and its card a ``length_control`` record.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from rewardserve.backends.encoder_head import EncoderHeadBackend, load_card, load_head, save_head

from ..datasets import file_sha256, load_pairs
from ..evaluation import pairwise_metrics
from .heads import encode_features, split_pairs


def length_slope(rewards: np.ndarray, chars: np.ndarray) -> float:
    """Least-squares slope of rewards on lengths: subtracting slope × length leaves them uncorrelated."""
    chars = np.asarray(chars, dtype=np.float64)
    rewards = np.asarray(rewards, dtype=np.float64)
    var = float(np.var(chars))
    if var == 0.0:
        raise ValueError("all replies have the same length: the length slope is undefined")
    return float(np.mean((chars - chars.mean()) * (rewards - rewards.mean())) / var)


def fit_length_control(
    head: str, data: str, val_fraction: float = 0.1, seed: int = 0, backbone: str | None = None, log=print
) -> dict:
    """Fit β for ``head`` on the validation split of ``data`` and write it into the head and its card."""
    path = Path(head)
    model, meta = load_head(path)
    be = EncoderHeadBackend("fit", heads={"m": str(path)}, path=backbone)  # base encoder + the head's delta
    pairs = load_pairs(data)
    _, va = split_pairs(pairs, val_fraction, seed)
    val = [pairs[i] for i in va]
    log(f"scoring {2 * len(val)} validation replies of {data} with {path.name} (uncorrected)")
    with torch.inference_mode():  # the head alone: the uncorrected reward
        rc = model(encode_features(be, [(p.prompt, p.chosen) for p in val])).double().numpy()
        rr = model(encode_features(be, [(p.prompt, p.rejected) for p in val])).double().numpy()
    lc = np.array([len(p.chosen) for p in val], dtype=np.float64)
    lr = np.array([len(p.rejected) for p in val], dtype=np.float64)
    beta = length_slope(np.r_[rc, rr], np.r_[lc, lr])
    record = {
        "coef_per_char": beta,
        "fitted_on": {
            "path": str(data),
            "sha256": file_sha256(data),
            "split": f"validation: {val_fraction:.0%} of pairs grouped by first user message, seed {seed}",
            "pairs": len(val),
        },
        "validation_uncorrected": pairwise_metrics(rc, rr, lc, lr),
        "validation_corrected": pairwise_metrics(rc - beta * lc, rr - beta * lr, lc, lr),
    }
    save_head(model, path, {**meta, "length_coef": repr(beta)})
    card = load_card(path) or {}
    card["length_control"] = record
    path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    log(json.dumps(record, indent=2))
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rewardlab.training.length_control", description=__doc__)
    ap.add_argument("--head", required=True, help="the head's safetensors file (rewritten with length_coef)")
    ap.add_argument("--data", required=True, help="the train pairs file the head was trained on")
    ap.add_argument("--val-fraction", type=float, default=0.1, help="validation share, as in training")
    ap.add_argument("--seed", type=int, default=0, help="the split's seed, as in training")
    ap.add_argument("--backbone", default=None, help="base encoder folder (default: bundled all-MiniLM-L6-v2)")
    a = ap.parse_args(argv)
    fit_length_control(a.head, a.data, a.val_fraction, a.seed, a.backbone)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
