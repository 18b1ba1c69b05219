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
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from rewardclient.protocol import DEFAULT_QUANTILE

from .best_of_k import HeldOutPrompts, doc

CACHE = Path("~/.cache/rewardserve/experiments/kl-curves").expanduser()
HELD_OUT_DOCS = {f.name: f.metadata for f in dataclasses.fields(HeldOutPrompts)}
# the settings the pool depends on: a change of any starts a new samples file
_POOL_KEYS = (
    "prompts",
    "split",
    "n_prompts",
    "max_prompt_tokens",
    "policy",
    "n",
    "reference_samples",
    "max_new_tokens",
    "temperature",
    "top_p",
    "batch_prompts",
    "seed",
)


@dataclass
class KLCurvesConfig(HeldOutPrompts):
    """Experiment C's settings (also the options of ``rewardserve experiment kl-curves``). The proxies are
    served by rewardserve through its HTTP API (a running service at ``url``, or one started with
    ``proxy_config``); the gold models are scored in process from ``gold_config``; ``proxy_models[i]``
    is judged by ``gold_models[i]``."""

    n_prompts: int = field(default=100, metadata=HELD_OUT_DOCS["n_prompts"])
    max_new_tokens: int = field(default=64, metadata=HELD_OUT_DOCS["max_new_tokens"])
    batch_prompts: int = field(default=4, metadata=HELD_OUT_DOCS["batch_prompts"])
    n: int = field(default=32, metadata=doc("candidates per prompt: the pool that selection moves over"))
    reference_samples: int = field(
        default=16,
        metadata=doc("further samples per prompt, never candidates: they set the proxies' and gold models' references"),
    )
    seed: int = field(default=0, metadata=doc("seed of sampling and of the bootstrap"))
    cache_dir: str = field(
        default=str(CACHE),
        metadata=doc("where the sample pool is kept (its file name hashes the settings it depends on)"),
    )
    url: str | None = field(
        default=None, metadata=doc("a running service that serves the proxies (default: start one with proxy_config)")
    )
    proxy_config: str | None = field(
        default=None, metadata=doc("service config of the proxy reward models (default: the embedded default)")
    )
    proxy_models: list[str] | None = field(default=None, metadata=doc("the proxies, in the order of gold_models"))
    gold_config: str | None = field(
        default=None,
        metadata=doc("config of the gold reward models, scored in process (default: the embedded default)"),
    )
    gold_models: list[str] | None = field(default=None, metadata=doc("the gold models: the i-th judges the i-th proxy"))
    quantile: float = field(
        default=DEFAULT_QUANTILE, metadata=doc("references are this quantile of the reference samples")
    )
    kl_targets: list[float] = field(
        default_factory=lambda: [0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0],
        metadata=doc("KL divergences from the base policy at which the curves are read"),
    )
    best_of: list[int] = field(
        default_factory=lambda: [1, 2, 4, 8, 16, 32], metadata=doc("best-of-n selections to place on the KL axis")
    )
    bootstrap: int = field(default=1000, metadata=doc("bootstrap resamples over prompts for the 95% intervals"))
    out_dir: str = field(default="docs/experiments", metadata=doc("where kl_curves.json, kl_curves.md and plots go"))


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
    from ..policy import load_policy
    from .best_of_k import seeded_samples, select_prompts

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
    bar = tqdm(
        total=len(prompts), initial=sum(1 for p in prompts if p["index"] in done), desc="kl-curves pool", unit="prompt"
    )
    fresh = 0
    for batch, texts in seeded_samples(model, tok, prompts, done, per_prompt, cfg, cfg.seed):
        with open(path, "a", encoding="utf-8") as f:
            for p, ts in zip(batch, texts):
                if p["index"] in done:
                    continue
                lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in ts]
                row = {
                    **p,
                    "candidates": ts[: cfg.n],
                    "lengths": lengths[: cfg.n],
                    "reference_samples": ts[cfg.n :],
                    "reference_lengths": lengths[cfg.n :],
                }
                f.write(json.dumps(row) + "\n")
                done[p["index"]] = row
                fresh += 1
        bar.update(len(batch))
        bar.set_postfix(samples_per_s=f"{fresh * per_prompt / (time.perf_counter() - t0):.2f}")
        if max_seconds is not None and time.perf_counter() - t0 >= max_seconds:
            break
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
    from rewardserve import lsc

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


def transform_room(rewards, ref) -> dict[str, float]:
    """How much room the LSC transform has on a pool (prompts × N rewards, per-prompt references):
    the mean within-prompt standard deviation of the rewards, and the mean per-prompt range of the
    transform's slope σ(r_ref − r) over the candidates. A range near 0 means log σ(r − r_ref) is
    close to linear over the pool, so any utility built from it ranks like the raw reward."""
    import numpy as np

    slope = 1.0 / (1.0 + np.exp(rewards - ref[:, None]))
    return {
        "within_prompt_std": float(rewards.std(axis=1).mean()),
        "slope_range": float((slope.max(axis=1) - slope.min(axis=1)).mean()),
    }


PAIRS = {"lsc_sum": "raw_sum"}  # paired differences at matched KL: lsc − raw (single models added per run)


def analyse(
    proxy,
    proxy_ref_samples,
    gold,
    gold_ref_samples,
    lengths,
    models: list[str],
    quantile: float = DEFAULT_QUANTILE,
    kl_targets=None,
    best_of=None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Every curve point with bootstrap intervals over prompts, and the paired lsc − raw differences
    at matched KL. Arrays: ``proxy``/``gold`` prompts × N × models (candidates' raw rewards),
    ``*_ref_samples`` prompts × K × models (the reference samples' raw rewards), ``lengths`` prompts × N."""
    import numpy as np

    from . import kl as K
    from .stats import references, worst_decile

    kl_targets = K.DEFAULT_KL_TARGETS if kl_targets is None else kl_targets
    best_of = tuple(n for n in (K.DEFAULT_BEST_OF if best_of is None else best_of) if n <= 4 * proxy.shape[1])
    proxy_ref, gold_ref = references(proxy_ref_samples, quantile), references(gold_ref_samples, quantile)
    worst = worst_decile(gold, gold_ref)  # by the judge: where the base policy does worst
    us = utilities(proxy, proxy_ref, models)
    per: dict[str, list[dict]] = {}
    curves: dict[str, list[dict]] = {}
    for name, u in us.items():
        per[name], curves[name] = [], []
        for pt in K.selections(u, kl_targets, best_of):
            v = K.per_prompt_point(pt["weights"], proxy, gold, gold_ref, lengths)
            per[name].append(v)
            curves[name].append(
                {
                    "beta": pt["beta"],
                    "n": pt["n"],
                    "kl": float(v["kl"].mean()) if pt["n"] is None else pt["target_kl"],
                    "kl_pool": float(v["kl"].mean()),
                    "kl_spread": [float(np.quantile(v["kl"], 0.1)), float(np.quantile(v["kl"], 0.9))],
                    "gold_good_on_all": _ci(v["gold_good_on_all"], n_boot, seed),
                    "gold_win_rate": {m: _ci(v["gold_win_rate"][:, i], n_boot, seed) for i, m in enumerate(models)},
                    "proxy_win_rate": {m: _ci(v["proxy_win_rate"][:, i], n_boot, seed) for i, m in enumerate(models)},
                    "overoptimisation": {
                        m: _ci(v["overoptimisation"][:, i], n_boot, seed) for i, m in enumerate(models)
                    },
                    "worst_decile_gold_gain": {
                        m: _ci(v["gold_gain"][worst[:, i], i], n_boot, seed) for i, m in enumerate(models)
                    },
                    "mean_length": float(v["length"].mean()),
                }
            )
    pairs = dict(PAIRS, **{f"lsc:{m}": f"raw:{m}" for m in models})
    paired: dict[str, list[dict]] = {}
    for a, b in pairs.items():
        paired[f"{a} - {b}"] = []
        for pa, pb, ca in zip(per[a], per[b], curves[a]):
            paired[f"{a} - {b}"].append(
                {
                    "beta": None,
                    "n": ca["n"],
                    "kl": ca["kl"],
                    "gold_good_on_all": _ci(pa["gold_good_on_all"] - pb["gold_good_on_all"], n_boot, seed),
                    "gold_win_rate": {
                        m: _ci(pa["gold_win_rate"][:, i] - pb["gold_win_rate"][:, i], n_boot, seed)
                        for i, m in enumerate(models)
                    },
                    "overoptimisation": {
                        m: _ci(pa["overoptimisation"][:, i] - pb["overoptimisation"][:, i], n_boot, seed)
                        for i, m in enumerate(models)
                    },
                    "worst_decile_gold_gain": {
                        m: _ci(pa["gold_gain"][worst[:, i], i] - pb["gold_gain"][worst[:, i], i], n_boot, seed)
                        for i, m in enumerate(models)
                    },
                }
            )
    base_good = np.all(gold > gold_ref[:, None, :], axis=2).mean(axis=1)
    return {
        "models": models,
        "n_prompts": int(proxy.shape[0]),
        "n_samples": int(proxy.shape[1]),
        "reference_samples": int(proxy_ref_samples.shape[1]),
        "quantile": quantile,
        "bootstrap": n_boot,
        "base_gold_good_on_all": _ci(base_good, n_boot, seed),
        "pool_pair_agreement": {m: pool_agreement(proxy[:, :, i], gold[:, :, i]) for i, m in enumerate(models)},
        "proxy_transform_room": {m: transform_room(proxy[:, :, i], proxy_ref[:, i]) for i, m in enumerate(models)},
        "gold_transform_room": {m: transform_room(gold[:, :, i], gold_ref[:, i]) for i, m in enumerate(models)},
        "curves": curves,
        "paired": paired,
    }


# -- scoring: proxies through the service's API, gold in process; cached next to the pool --------------
def _texts(rows: list[dict]) -> list[tuple]:
    """Every (prompt, response) of the pool, candidates then reference samples, prompt by prompt."""
    return [(r["prompt"], t) for r in rows for t in (*r["candidates"], *r["reference_samples"])]


def _split(flat, rows: list[dict], n: int, k: int):
    """(candidates prompts × n, reference samples prompts × k) from a flat score list."""
    import numpy as np

    a = np.asarray(flat, dtype=float).reshape(len(rows), n + k)
    return a[:, :n], a[:, n:]


def _score_cache(pool: Path, role: str, model: str, revision: str) -> Path:
    return pool.with_name(f"{pool.stem}.{role}.{model}.{revision[:16]}.json")


def score_proxies(cfg: KLCurvesConfig, pool: Path, rows: list[dict]) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Raw proxy rewards of every pool text, through ``POST /v1/score`` (cached per model revision)."""
    from rewardclient import RewardClient
    from rewardserve.service_process import ServiceProcess

    svc = None if cfg.url else ServiceProcess(cfg.proxy_config).start()
    if cfg.url:
        url = cfg.url
    else:
        assert svc is not None  # started above: no url was given
        url = svc.url
    try:
        with RewardClient(url, max_items_per_request=256) as client:
            served = {m["name"]: m["revision"] for m in client.models()}
            models = cfg.proxy_models or list(served)
            scores, revisions = {}, {}
            todo = []
            for m in models:
                if m not in served:
                    raise ValueError(f"proxy model {m!r} is not served at {url}; served: {sorted(served)}")
                revisions[m] = served[m]
                path = _score_cache(pool, "proxy", m, served[m])
                if path.exists():
                    scores[m] = json.loads(path.read_text())
                else:
                    todo.append(m)
            if todo:
                texts = _texts(rows)
                flat: dict[str, list[float]] = {m: [] for m in todo}
                for s in tqdm(range(0, len(texts), 256), desc="proxy scores", unit="chunk"):
                    res = client.score(
                        [{"prompt": p, "response": r} for p, r in texts[s : s + 256]],
                        models=todo,
                        aggregate={"method": "raw_sum"},
                    )
                    for m in todo:
                        flat[m].extend(x.raw[m] for x in res)
                for m in todo:
                    _score_cache(pool, "proxy", m, served[m]).write_text(json.dumps(flat[m]))
                    scores[m] = flat[m]
    finally:
        if svc is not None:
            svc.stop()
    return scores, revisions


async def _score_gold(
    cfg: KLCurvesConfig, pool: Path, rows: list[dict]
) -> tuple[dict[str, list[float]], dict[str, str]]:
    from rewardserve.config import load_settings

    from ..evaluation import local_scorer, raw_rewards

    settings = load_settings(cfg.gold_config)
    models = cfg.gold_models or settings.model_names()
    scores, revisions = {}, {}
    async with local_scorer(settings, models) as scorer:
        texts = _texts(rows)
        for m in models:
            revisions[m] = scorer.models[m].revision
            path = _score_cache(pool, "gold", m, revisions[m])
            if path.exists():
                scores[m] = json.loads(path.read_text())
                continue
            flat: list[float] = []
            for s in tqdm(range(0, len(texts), 256), desc=f"gold scores {m}", unit="chunk"):
                raw = await raw_rewards(scorer, texts[s : s + 256], [m])
                flat.extend(raw[:, 0].tolist())
            path.write_text(json.dumps(flat))
            scores[m] = flat
    return scores, revisions


def run_kl_curves(cfg: KLCurvesConfig, max_generation_seconds: float | None = None) -> dict:
    """Generate (or continue) the pool, score it with proxies and gold, write kl_curves.json, the plots
    and a Markdown table to ``out_dir``. An incomplete pool (time limit) stops before scoring."""
    import asyncio

    import numpy as np

    t0 = time.perf_counter()
    pool, rows, complete = generate_pool(cfg, max_generation_seconds)
    if not complete:
        return {
            "complete": False,
            "pool": str(pool),
            "prompts_done": len(rows),
            "wall_seconds_this_run": time.perf_counter() - t0,
        }
    proxy_scores, proxy_rev = score_proxies(cfg, pool, rows)
    gold_scores, gold_rev = asyncio.run(_score_gold(cfg, pool, rows))
    proxies, golds = list(proxy_scores), list(gold_scores)
    if len(proxies) != len(golds):
        raise ValueError(f"{len(proxies)} proxy models but {len(golds)} gold models: they are paired by position")
    n, k = cfg.n, cfg.reference_samples
    pc, pr = zip(*(_split(proxy_scores[m], rows, n, k) for m in proxies))
    gc, gr = zip(*(_split(gold_scores[m], rows, n, k) for m in golds))
    lengths = np.array([r["lengths"] for r in rows], dtype=float)
    result = analyse(
        np.stack(pc, axis=2),
        np.stack(pr, axis=2),
        np.stack(gc, axis=2),
        np.stack(gr, axis=2),
        lengths,
        proxies,
        cfg.quantile,
        cfg.kl_targets,
        cfg.best_of,
        cfg.bootstrap,
        cfg.seed,
    )
    result = {
        "proxy": proxy_rev,
        "gold": dict(zip(proxies, (gold_rev[g] for g in golds))),
        "gold_models": dict(zip(proxies, golds)),
        **result,
        "responses_at_length_cap": float(np.mean(lengths >= cfg.max_new_tokens)),
        "sources": {s: sum(1 for r in rows if r["source"] == s) for s in sorted({r["source"] for r in rows})},
        "config": dataclasses.asdict(cfg),
        "pool": str(pool),
        "complete": True,
        "wall_seconds_this_run": time.perf_counter() - t0,
    }
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kl_curves.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out)
    (out / "kl_curves.md").write_text(markdown_table(result) + "\n", encoding="utf-8")
    return result


# -- report ------------------------------------------------------------------------------------------
def _f(ci, digits: int = 3) -> str:
    return "–" if ci is None else f"{ci[1]:.{digits}f} [{ci[0]:.{digits}f}, {ci[2]:.{digits}f}]"


def markdown_table(result: dict) -> str:
    """The paired lsc − raw differences at matched KL (aggregate and per model), one row per point."""
    models = result["models"]
    lines = []
    for name, pts in result["paired"].items():
        m_cols = models if name.startswith("lsc_sum") else [name.split(" - ")[0].split(":", 1)[1]]
        head = [
            "KL",
            "point",
            "Δ gold good on all",
            *[f"Δ gold win {m}" for m in m_cols],
            *[f"Δ over-opt. {m}" for m in m_cols],
            *[f"Δ worst-decile gold gain {m}" for m in m_cols],
        ]
        lines += [f"### {name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for p in pts:
            cells = [
                f"{p['kl']:.2f}",
                f"best-of-{p['n']}" if p["n"] else "tilted",
                _f(p["gold_good_on_all"]),
                *[_f(p["gold_win_rate"][m]) for m in m_cols],
                *[_f(p["overoptimisation"][m]) for m in m_cols],
                *[_f(p["worst_decile_gold_gain"][m]) for m in m_cols],
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(result: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .best_of_k import per_model

    models = result["models"]
    panels = [("gold good on all", "raw_sum", "lsc_sum", lambda p: p["gold_good_on_all"])]
    panels += [(f"gold win rate {m} (sum)", "raw_sum", "lsc_sum", per_model("gold_win_rate", m)) for m in models]
    panels += [
        (f"over-optimisation {m} (alone)", f"raw:{m}", f"lsc:{m}", per_model("overoptimisation", m)) for m in models
    ]
    panels += [
        (f"worst-decile gold gain {m} (alone)", f"raw:{m}", f"lsc:{m}", per_model("worst_decile_gold_gain", m))
        for m in models
    ]
    cols = 3
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.4 * rows_n), squeeze=False)
    for ax, (title, a, b, get) in zip(axes.flat, panels):
        for name, color in ((a, "tab:orange"), (b, "tab:blue")):
            for kind, marker, ls in (("tilted", "o", "-"), ("best-of-n", "s", ":")):
                pts = [p for p in result["curves"][name] if (p["n"] is None) == (kind == "tilted") and get(p)]
                if not pts:
                    continue
                xs = [p["kl"] for p in pts]
                ax.plot(xs, [get(p)[1] for p in pts], marker=marker, ls=ls, ms=3, color=color, label=f"{name} {kind}")
                ax.fill_between(xs, [get(p)[0] for p in pts], [get(p)[2] for p in pts], color=color, alpha=0.15)
        ax.set_xlabel("KL from the base policy (nats)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    path = out / "kl_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
