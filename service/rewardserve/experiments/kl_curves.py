"""Experiment C: KL-indexed curves of proxy-optimised selection, judged by gold reward models.

Stage 1 (this module's ``generate_pool``, the slow part): for held-out prompts (test split, equal
shares of HH and AlpacaEval), the base policy samples ``n`` candidates per prompt (the pool that
selection moves over) and ``reference_samples`` further responses that are never candidates: the
references r_ref(x) — of the proxies (as ``rewardserve calibrate`` would compute them) and of the
gold models — are their quantiles. Samples are appended to a JSONL file under
``~/.cache/rewardserve/experiments/kl-curves/`` as soon as each batch of prompts is done; the file's
name is a hash of every setting it depends on, so a rerun with the same settings continues where
the last one stopped (in this session or a later one) and a change of settings starts a new file.
Each batch is seeded from ``seed`` and its first prompt's position: a rerun from scratch draws the
same samples.

Generation depends on the base policy only — not on any reward model — so the pool is reused by
every proxy and gold model scored on it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

CACHE = Path("~/.cache/rewardserve/experiments/kl-curves").expanduser()
# the settings the pool depends on: a change of any starts a new samples file
_POOL_KEYS = ("prompts", "split", "n_prompts", "max_prompt_tokens", "policy", "n", "reference_samples",
              "max_new_tokens", "temperature", "top_p", "batch_prompts", "seed")


@dataclass
class KLCurvesConfig:
    prompts: str = "../shared/data/prompts.jsonl.gz"
    split: str = "test"
    n_prompts: int = 100                 # equal shares per source (HH, AlpacaEval)
    max_prompt_tokens: int = 128         # rendered prompt length cap (policy tokens)
    policy: str | None = None            # None: SmolLM2-135M-Instruct
    n: int = 32                          # candidates per prompt: the pool selection moves over
    reference_samples: int = 16          # further samples per prompt, never candidates: references
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 0.9
    batch_prompts: int = 4
    seed: int = 0
    cache_dir: str = str(CACHE)
    out_dir: str = "runs/experiments/kl-curves"


def pool_meta(cfg: KLCurvesConfig) -> dict:
    from ..policy import policy_id

    meta = {k: v for k, v in dataclasses.asdict(cfg).items() if k in _POOL_KEYS}
    meta["prompts"] = Path(cfg.prompts).name  # the file, wherever it is mounted
    meta["policy"] = policy_id(cfg.policy)
    return meta


def pool_path(cfg: KLCurvesConfig) -> Path:
    digest = hashlib.sha256(json.dumps(pool_meta(cfg), sort_keys=True).encode()).hexdigest()[:16]
    return Path(cfg.cache_dir).expanduser() / f"pool-{digest}.jsonl"


def read_pool(path: Path) -> dict[int, dict]:
    """The rows written so far, by prompt index (a torn last line from an interrupted run is dropped)."""
    rows: dict[int, dict] = {}
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows[row["index"]] = row
    return rows


def generate_pool(cfg: KLCurvesConfig, max_seconds: float | None = None) -> tuple[Path, list[dict], bool]:
    """Generate (or continue) the pool; returns (path, rows in prompt order, complete). With
    ``max_seconds`` it stops after the batch that crosses that wall time (resumable)."""
    import torch

    from ..policy import generate, load_policy
    from .best_of_k import select_prompts

    path = pool_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta_path = path.with_suffix(".meta.json")
    if not meta_path.exists():
        meta_path.write_text(json.dumps(pool_meta(cfg), indent=2) + "\n")
    done = read_pool(path)
    # rewrite the file from the parsed rows, so a torn last line never precedes new rows
    if path.exists():
        path.write_text("".join(json.dumps(done[i]) + "\n" for i in sorted(done)), encoding="utf-8")
    model, tok = load_policy(cfg.policy)
    prompts = select_prompts(cfg.prompts, cfg.split, cfg.n_prompts, tok, cfg.max_prompt_tokens)
    per_prompt = cfg.n + cfg.reference_samples
    t0 = time.perf_counter()
    bar = tqdm(total=len(prompts), initial=sum(1 for p in prompts if p["index"] in done), desc="kl-curves pool",
               unit="prompt")
    fresh = 0
    for s in range(0, len(prompts), cfg.batch_prompts):
        batch = prompts[s:s + cfg.batch_prompts]
        if all(p["index"] in done for p in batch):
            continue
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            break
        torch.manual_seed(cfg.seed * 1_000_003 + s)
        texts = generate(model, tok, [p["prompt"] for p in batch], per_prompt, cfg.max_new_tokens, cfg.temperature,
                         cfg.top_p)
        with open(path, "a", encoding="utf-8") as f:
            for p, ts in zip(batch, texts):
                if p["index"] in done:
                    continue
                lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in ts]
                row = {**p, "candidates": ts[:cfg.n], "lengths": lengths[:cfg.n],
                       "reference_samples": ts[cfg.n:], "reference_lengths": lengths[cfg.n:]}
                f.write(json.dumps(row) + "\n")
                done[p["index"]] = row
                fresh += 1
        bar.update(len(batch))
        bar.set_postfix(samples_per_s=f"{fresh * per_prompt / (time.perf_counter() - t0):.2f}")
    bar.close()
    rows = [done[p["index"]] for p in prompts if p["index"] in done]
    return path, rows, len(rows) == len(prompts)


# -- analysis (pure: arrays in, JSON-ready dict out) --------------------------------------------------
def _ci(values, n_boot: int, seed: int) -> list[float] | None:
    from .stats import bootstrap_ci

    c = bootstrap_ci(values, n_boot, seed)
    return None if c["mean"] is None else [c["lo"], c["mean"], c["hi"]]


def utilities(proxy, proxy_ref, models: list[str]) -> dict:
    """The utilities selection optimises, from the proxies' raw rewards (prompts × N × models) and
    references (prompts × models): raw_sum, lsc_sum, and each model alone raw and LSC-transformed."""
    from .. import lsc

    u_lsc = lsc.transform(proxy, proxy_ref[:, None, :], "lsc")
    out = {"raw_sum": proxy.sum(axis=2), "lsc_sum": u_lsc.sum(axis=2)}
    for i, m in enumerate(models):
        out[f"raw:{m}"] = proxy[:, :, i]
        out[f"lsc:{m}"] = u_lsc[:, :, i]
    return out


def pool_agreement(proxy, gold) -> float:
    """Share of the pool's pairs (same prompt, two different samples, no tie in either) that proxy
    and gold order the same way."""
    import numpy as np

    dp = np.sign(proxy[:, :, None] - proxy[:, None, :])
    dg = np.sign(gold[:, :, None] - gold[:, None, :])
    valid = (dp != 0) & (dg != 0)
    return float((dp == dg)[valid].mean()) if valid.any() else float("nan")


PAIRS = {"lsc_sum": "raw_sum"}  # paired differences at matched KL: lsc − raw (single models added per run)


def analyse(proxy, proxy_ref_samples, gold, gold_ref_samples, lengths, models: list[str], quantile: float = 0.85,
            kl_targets=None, best_of=None, n_boot: int = 1000, seed: int = 0) -> dict:
    """Every curve point with bootstrap intervals over prompts, and the paired lsc − raw differences
    at matched KL. Arrays: ``proxy``/``gold`` prompts × N × models (candidates' raw rewards),
    ``*_ref_samples`` prompts × K × models (the reference samples' raw rewards), ``lengths`` prompts × N."""
    import numpy as np

    from . import kl as K
    from .stats import references

    kl_targets = K.DEFAULT_KL_TARGETS if kl_targets is None else kl_targets
    best_of = tuple(n for n in (K.DEFAULT_BEST_OF if best_of is None else best_of) if n <= 4 * proxy.shape[1])
    proxy_ref, gold_ref = references(proxy_ref_samples, quantile), references(gold_ref_samples, quantile)
    worst = K.worst_decile_prompts(gold, gold_ref)
    us = utilities(proxy, proxy_ref, models)
    per: dict[str, list[dict]] = {}
    curves: dict[str, list[dict]] = {}
    for name, u in us.items():
        per[name], curves[name] = [], []
        for pt in K.selections(u, kl_targets, best_of):
            v = K.per_prompt_point(pt["weights"], proxy, gold, gold_ref, lengths)
            per[name].append(v)
            curves[name].append({
                "beta": pt["beta"], "n": pt["n"], "kl": float(v["kl"].mean()) if pt["n"] is None else pt["target_kl"],
                "kl_pool": float(v["kl"].mean()),
                "kl_spread": [float(np.quantile(v["kl"], 0.1)), float(np.quantile(v["kl"], 0.9))],
                "gold_good_on_all": _ci(v["gold_good_on_all"], n_boot, seed),
                "gold_win_rate": {m: _ci(v["gold_win_rate"][:, i], n_boot, seed) for i, m in enumerate(models)},
                "proxy_win_rate": {m: _ci(v["proxy_win_rate"][:, i], n_boot, seed) for i, m in enumerate(models)},
                "overoptimisation": {m: _ci(v["overoptimisation"][:, i], n_boot, seed) for i, m in enumerate(models)},
                "worst_decile_gold_gain": {m: _ci(v["gold_gain"][worst[:, i], i], n_boot, seed)
                                           for i, m in enumerate(models)},
                "mean_length": float(v["length"].mean()),
            })
    pairs = dict(PAIRS, **{f"lsc:{m}": f"raw:{m}" for m in models})
    paired: dict[str, list[dict]] = {}
    for a, b in pairs.items():
        paired[f"{a} - {b}"] = []
        for pa, pb, ca in zip(per[a], per[b], curves[a]):
            paired[f"{a} - {b}"].append({
                "beta": None, "n": ca["n"], "kl": ca["kl"],
                "gold_good_on_all": _ci(pa["gold_good_on_all"] - pb["gold_good_on_all"], n_boot, seed),
                "gold_win_rate": {m: _ci(pa["gold_win_rate"][:, i] - pb["gold_win_rate"][:, i], n_boot, seed)
                                  for i, m in enumerate(models)},
                "overoptimisation": {m: _ci(pa["overoptimisation"][:, i] - pb["overoptimisation"][:, i], n_boot, seed)
                                     for i, m in enumerate(models)},
                "worst_decile_gold_gain": {m: _ci(pa["gold_gain"][worst[:, i], i] - pb["gold_gain"][worst[:, i], i],
                                                  n_boot, seed) for i, m in enumerate(models)},
            })
    base_good = np.all(gold > gold_ref[:, None, :], axis=2).mean(axis=1)
    return {"models": models, "n_prompts": int(proxy.shape[0]), "n_samples": int(proxy.shape[1]),
            "reference_samples": int(proxy_ref_samples.shape[1]), "quantile": quantile, "bootstrap": n_boot,
            "base_gold_good_on_all": _ci(base_good, n_boot, seed),
            "pool_pair_agreement": {m: pool_agreement(proxy[:, :, i], gold[:, :, i]) for i, m in enumerate(models)},
            "curves": curves, "paired": paired}
