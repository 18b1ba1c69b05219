"""Proxy–gold agreement on held-out preference pairs (experiment C's check that the proxies are
weaker than the gold judge and disagree with it measurably).

Input: ``rewardserve eval-rm --scores-out`` files of the same test pairs, ``<role>-<model>.npz``
(per-pair ``chosen`` and ``rejected`` rewards) for role ``gold`` and each proxy role.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .stats import bootstrap_ci


def pair_agreement(proxy_margin, gold_margin, n_boot: int = 1000, seed: int = 0) -> dict:
    """Share of pairs that proxy and gold order the same way (margins r(chosen) − r(rejected) of
    equal sign; a zero margin counts as disagreement), with its bootstrap interval over pairs."""
    p, g = np.asarray(proxy_margin, dtype=float), np.asarray(gold_margin, dtype=float)
    if p.shape != g.shape:
        raise ValueError(f"proxy and gold scored different pairs: {p.shape} vs {g.shape}")
    return bootstrap_ci((np.sign(p) * np.sign(g) > 0).astype(float), n_boot, seed)


def agreement_table(
    eval_dir: str | Path, models=("helpful", "harmless"), proxies=("proxy",), n_boot: int = 1000
) -> dict:
    """Per proxy role and model: proxy and gold test accuracy and their agreement, each with a 95 %
    interval over pairs."""
    d = Path(eval_dir).expanduser()
    out: dict[str, dict] = {}
    for role in proxies:
        out[role] = {}
        for m in models:
            z = {r: np.load(d / f"{r}-{m}.npz") for r in (role, "gold")}
            margin = {r: z[r]["chosen"] - z[r]["rejected"] for r in z}
            out[role][m] = {
                "pairs": int(margin["gold"].size),
                "agreement": pair_agreement(margin[role], margin["gold"], n_boot),
                "proxy_accuracy": bootstrap_ci((margin[role] > 0).astype(float), n_boot),
                "gold_accuracy": bootstrap_ci((margin["gold"] > 0).astype(float), n_boot),
            }
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m rewardlab.experiments.agreement", description=__doc__.split("\n")[0])
    ap.add_argument("eval_dir", help="folder with gold-<model>.npz and proxy-<model>.npz (eval-rm --scores-out)")
    ap.add_argument("--models", nargs="+", default=["helpful", "harmless"])
    ap.add_argument("--proxies", nargs="+", default=["proxy"], help="proxy roles: files <role>-<model>.npz")
    ap.add_argument("--out", help="also write the table as JSON here")
    a = ap.parse_args(argv)
    table = agreement_table(a.eval_dir, a.models, a.proxies)
    text = json.dumps(table, indent=2)
    if a.out:
        Path(a.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
