"""Experiment A: best-of-k selection by ``raw_sum`` vs ``lsc_sum`` (no training).

For held-out prompts (test split, both sources, equal shares), the base policy samples
``calibration_samples`` responses that set each prompt's reference (their ``quantile`` per model)
and, separately, ``n`` candidate responses. For each k, the best of the first k candidates is picked
by the plain sum of raw rewards and by the sum of LSC-transformed rewards, and the picks are compared
per k: mean raw reward per model, "good on all" (above the reference on every model), the gain of the
worst-decile prompts, and length. Intervals: percentile bootstrap over prompts.

Generation is the slow part; every prompt's samples and rewards are appended to ``samples.jsonl`` as
soon as they exist, and a rerun with the same settings continues where the last one stopped. Each
batch of prompts is seeded from ``seed`` and its first prompt's position, so a rerun from scratch
draws the same samples.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rewardclient import prompt_fingerprint
from rewardclient.protocol import DEFAULT_QUANTILE

from ..datasets import iter_jsonl
from . import stats

METHODS = ("raw_sum", "lsc_sum")
# the settings a samples file depends on: a rerun with any of these changed starts a new file
_SAMPLE_KEYS = (
    "prompts",
    "split",
    "n_prompts",
    "max_prompt_tokens",
    "policy",
    "n",
    "calibration_samples",
    "max_new_tokens",
    "temperature",
    "top_p",
    "batch_prompts",
    "seed",
    "models",
)


def doc(text: str) -> dict[str, str]:
    """A config field's description (dataclass field metadata), shown as its option's help."""
    return {"description": text}


@dataclass
class HeldOutPrompts:
    """Held-out prompts and how the base policy samples on them: the settings experiments A and C share."""

    prompts: str = field(
        default="../shared/data/prompts.jsonl.gz", metadata=doc("prompts.jsonl(.gz) with split and source per prompt")
    )
    split: str = field(default="test", metadata=doc("the split the held-out prompts come from"))
    n_prompts: int = field(default=200, metadata=doc("held-out prompts, equal shares per source (HH, AlpacaEval)"))
    max_prompt_tokens: int = field(default=128, metadata=doc("skip prompts longer than this (rendered, policy tokens)"))
    policy: str | None = field(
        default=None, metadata=doc("the base policy: folder, hub id or .gguf file (default: SmolLM2-135M-Instruct)")
    )
    max_new_tokens: int = field(default=48, metadata=doc("longest sampled response, in policy tokens"))
    temperature: float = field(default=0.7, metadata=doc("sampling temperature"))
    top_p: float = field(default=0.9, metadata=doc("nucleus sampling top-p"))
    batch_prompts: int = field(default=8, metadata=doc("prompts per generate call"))


@dataclass
class BestOfKConfig(HeldOutPrompts):
    """Experiment A's settings (also the options of ``rewardserve experiment best-of-k``)."""

    n: int = field(default=16, metadata=doc("candidate responses per prompt"))
    calibration_samples: int = field(
        default=8, metadata=doc("further samples per prompt, never candidates: they set the prompt's reference")
    )
    quantile: float = field(
        default=DEFAULT_QUANTILE, metadata=doc("the reference is this quantile of the calibration samples")
    )
    ks: list[int] = field(
        default_factory=lambda: [1, 2, 4, 8, 16],
        metadata=doc("the k of best-of-k: each pick is the best of the first k candidates"),
    )
    seed: int = field(default=0, metadata=doc("seed of sampling and of the bootstrap"))
    bootstrap: int = field(default=1000, metadata=doc("bootstrap resamples over prompts for the 95% intervals"))
    config: str | None = field(
        default=None, metadata=doc("service config with the reward models (default: the embedded default)")
    )
    models: list[str] | None = field(default=None, metadata=doc("reward models to combine (default: every configured)"))
    out_dir: str = field(
        default="runs/experiments/best-of-k",
        metadata=doc("where samples.jsonl, results.json and results.md go (a rerun continues there)"),
    )


def per_model(key: str, model: str) -> Callable[[dict], Any]:
    """The getter of ``row[key][model]`` (a plot panel's values)."""
    return lambda row: row[key][model]


def equal_shares(by_source: dict[str, list], n: int) -> list:
    """``n`` rows: an equal share of each source (in order), the rest filled from the leftovers."""
    share = n // len(by_source)
    chosen = [r for src in sorted(by_source) for r in by_source[src][:share]]
    chosen += [r for src in sorted(by_source) for r in by_source[src][share:]][: n - len(chosen)]
    if len(chosen) < n:
        raise ValueError(f"only {len(chosen)} prompts qualify, {n} asked for")
    return chosen


def seeded_samples(
    model: Any, tok: Any, prompts: list[dict], done: Mapping[int, Any], per_prompt: int, cfg: HeldOutPrompts, seed: int
) -> Iterator[tuple[list[dict], list[list[str]]]]:
    """Base-policy samples, ``per_prompt`` per prompt, batch by batch of ``cfg.batch_prompts`` prompts:
    yields (batch, texts), skipping batches whose prompts are all ``done``. Each batch is seeded from
    ``seed`` and its first prompt's position, so a rerun (or a resumed run) draws the same samples."""
    import torch

    from ..policy import generate

    for s in range(0, len(prompts), cfg.batch_prompts):
        batch = prompts[s : s + cfg.batch_prompts]
        if all(p["index"] in done for p in batch):
            continue
        torch.manual_seed(seed * 1_000_003 + s)
        yield (
            batch,
            generate(
                model, tok, [p["prompt"] for p in batch], per_prompt, cfg.max_new_tokens, cfg.temperature, cfg.top_p
            ),
        )


def select_prompts(path: str, split: str, n_prompts: int, tok, max_prompt_tokens: int) -> list[dict]:
    """Equal shares of each source's prompts (file order) whose rendered prompt fits the cap."""
    from ..policy import render_prompt

    by_source: dict[str, list[dict]] = {}
    for _, row in iter_jsonl(Path(path).expanduser()):
        if not isinstance(row, dict) or row.get("split", split) != split:
            continue
        source = str(row.get("source", "unknown")).split(":")[0]
        if len(tok(render_prompt(tok, row["prompt"]), add_special_tokens=False)["input_ids"]) <= max_prompt_tokens:
            by_source.setdefault(source, []).append(row)
    if not by_source:
        raise ValueError(f"no {split!r} prompts of at most {max_prompt_tokens} tokens in {path}")
    chosen = equal_shares(
        {s: [{"source": s, "prompt": r["prompt"]} for r in rows] for s, rows in by_source.items()}, n_prompts
    )
    for i, c in enumerate(chosen):
        c["index"], c["fingerprint"] = i, prompt_fingerprint(c["prompt"])
    return chosen


def _settings_of(cfg: BestOfKConfig, settings):
    from rewardserve.config import load_settings

    return settings if settings is not None else load_settings(cfg.config)


def _read_samples(path: Path, meta: dict) -> dict[int, dict]:
    meta_path = path.with_name("meta.json")
    if not path.exists() or not meta_path.exists() or json.loads(meta_path.read_text()) != meta:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        path.write_text("")
        return {}
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["index"]] = row
    return rows


async def _generate_and_score(cfg: BestOfKConfig, settings, out: Path) -> list[dict]:

    from ..evaluation import local_scorer, raw_rewards
    from ..policy import load_policy, policy_id

    models = cfg.models or settings.model_names()
    meta = {k: v for k, v in dataclasses.asdict(cfg).items() if k in _SAMPLE_KEYS}
    meta.update(policy=policy_id(cfg.policy), models=models)
    path = out / "samples.jsonl"
    done = _read_samples(path, meta)
    model, tok = load_policy(cfg.policy)
    prompts = select_prompts(cfg.prompts, cfg.split, cfg.n_prompts, tok, cfg.max_prompt_tokens)
    per_prompt = cfg.calibration_samples + cfg.n
    t0 = time.perf_counter()
    fresh = 0
    async with local_scorer(settings, models) as scorer:
        bar = tqdm(
            total=len(prompts),
            initial=sum(1 for p in prompts if p["index"] in done),
            desc="best-of-k samples",
            unit="prompt",
        )
        for batch, texts in seeded_samples(model, tok, prompts, done, per_prompt, cfg, cfg.seed):
            pairs = [(p["prompt"], t) for p, ts in zip(batch, texts) for t in ts]
            raw = await raw_rewards(scorer, pairs, models)
            with open(path, "a", encoding="utf-8") as f:
                for j, (p, ts) in enumerate(zip(batch, texts)):
                    if p["index"] in done:
                        continue
                    block = raw[j * per_prompt : (j + 1) * per_prompt]
                    row = {
                        **p,
                        "calibration": ts[: cfg.calibration_samples],
                        "candidates": ts[cfg.calibration_samples :],
                        "lengths": [
                            len(tok(t, add_special_tokens=False)["input_ids"]) for t in ts[cfg.calibration_samples :]
                        ],
                        "raw_calibration": {
                            m: block[: cfg.calibration_samples, i].tolist() for i, m in enumerate(models)
                        },
                        "raw_candidates": {
                            m: block[cfg.calibration_samples :, i].tolist() for i, m in enumerate(models)
                        },
                    }
                    f.write(json.dumps(row) + "\n")
                    done[p["index"]] = row
                    fresh += 1
            bar.update(len(batch))
            bar.set_postfix(samples_per_s=f"{fresh * per_prompt / (time.perf_counter() - t0):.2f}")
        bar.close()
    return [done[p["index"]] for p in prompts]


def arrays(rows: list[dict], models: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(candidates P×n×M, calibration P×K×M, lengths P×n) from the samples file's rows."""
    cand = np.array([[r["raw_candidates"][m] for m in models] for r in rows]).transpose(0, 2, 1)
    calib = np.array([[r["raw_calibration"][m] for m in models] for r in rows]).transpose(0, 2, 1)
    lengths = np.array([r["lengths"] for r in rows])
    return cand, calib, lengths


def analyse(
    cand: np.ndarray,
    calib: np.ndarray,
    lengths: np.ndarray,
    models: list[str],
    ks: list[int],
    quantile: float,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Every metric per k and method, with bootstrap intervals, and the lsc_sum − raw_sum differences."""
    ref = stats.references(calib, quantile)
    worst = stats.worst_decile(cand, ref)
    table = []
    for k in ks:
        picks = {meth: stats.pick(cand, ref, meth, k) for meth in METHODS}
        per = {meth: stats.per_prompt_metrics(cand, ref, lengths, picks[meth]) for meth in METHODS}
        differ = picks["raw_sum"] != picks["lsc_sum"]
        row: dict = {
            "k": k,
            "picks_differ": int(differ.sum()),
            "where_picks_differ": {
                meth: {
                    "good_on_all": float(per[meth]["good_on_all"][differ].mean()) if differ.any() else None,
                    "above_reference": {
                        m: float((per[meth]["raw"][differ, i] > ref[differ, i]).mean()) if differ.any() else None
                        for i, m in enumerate(models)
                    },
                }
                for meth in METHODS
            },
        }
        for meth in (*METHODS, "lsc_minus_raw"):
            v = (
                per[meth]
                if meth != "lsc_minus_raw"
                else {key: per["lsc_sum"][key] - per["raw_sum"][key] for key in per["raw_sum"]}
            )
            row[meth] = {
                "raw": {m: stats.bootstrap_ci(v["raw"][:, i], n_boot, seed) for i, m in enumerate(models)},
                "good_on_all": stats.bootstrap_ci(v["good_on_all"], n_boot, seed),
                "worst_decile_gain": {
                    m: stats.bootstrap_ci(v["gain"][worst[:, i], i], n_boot, seed) for i, m in enumerate(models)
                },
                "other_gain": {
                    m: stats.bootstrap_ci(v["gain"][~worst[:, i], i], n_boot, seed) for i, m in enumerate(models)
                },
                "length": stats.bootstrap_ci(v["length"], n_boot, seed),
            }
        table.append(row)
    return {
        "models": models,
        "prompts": int(cand.shape[0]),
        "n": int(cand.shape[1]),
        "calibration_samples": int(calib.shape[1]),
        "quantile": quantile,
        "bootstrap": n_boot,
        "worst_decile_prompts": int(worst[:, 0].sum()),
        "base_good_on_all": stats.bootstrap_ci(np.all(cand > ref[:, None, :], axis=2).mean(axis=1), n_boot, seed),
        "table": table,
    }


def _fmt(ci: dict, digits: int = 3) -> str:
    return "–" if ci["mean"] is None else f"{ci['mean']:.{digits}f} [{ci['lo']:.{digits}f}, {ci['hi']:.{digits}f}]"


def markdown_table(result: dict) -> str:
    models = result["models"]
    head = [
        "k",
        "method",
        *[f"raw {m}" for m in models],
        "good on all",
        *[f"worst-decile gain {m}" for m in models],
        "length",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["table"]:
        for meth in (*METHODS, "lsc_minus_raw"):
            r = row[meth]
            cells = [
                str(row["k"]),
                meth.replace("_minus_", " − "),
                *[_fmt(r["raw"][m]) for m in models],
                _fmt(r["good_on_all"]),
                *[_fmt(r["worst_decile_gain"][m]) for m in models],
                _fmt(r["length"], 1),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, table = result["models"], result["table"]
    ks = [r["k"] for r in table]
    panels = [("good on all (fraction)", lambda r: r["good_on_all"])]
    panels += [(f"raw {m}", per_model("raw", m)) for m in models]
    panels += [(f"worst-decile gain {m}", per_model("worst_decile_gain", m)) for m in models]
    panels += [("length (tokens)", lambda r: r["length"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4))
    for ax, (title, get) in zip(axes, panels):
        for meth, color in zip(METHODS, ("tab:orange", "tab:blue")):
            cis = [get(r[meth]) for r in table]
            ax.plot(ks, [c["mean"] for c in cis], marker="o", color=color, label=meth)
            ax.fill_between(ks, [c["lo"] for c in cis], [c["hi"] for c in cis], color=color, alpha=0.2)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("k")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = out / "best_of_k.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_best_of_k(cfg: BestOfKConfig, settings=None) -> dict:
    """Generate (or resume), score, analyse; writes samples.jsonl, results.json, best_of_k.png, results.md."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings_of(cfg, settings)
    models = cfg.models or settings.model_names()
    t0 = time.perf_counter()
    rows = asyncio.run(_generate_and_score(cfg, settings, out))
    cand, calib, lengths = arrays(rows, models)
    result = analyse(
        cand, calib, lengths, models, [k for k in cfg.ks if k <= cfg.n], cfg.quantile, cfg.bootstrap, cfg.seed
    )
    result["config"] = dataclasses.asdict(cfg)
    result["sources"] = {s: sum(1 for r in rows if r["source"] == s) for s in sorted({r["source"] for r in rows})}
    result["responses_at_length_cap"] = float(np.mean(lengths >= cfg.max_new_tokens))
    result["wall_seconds_this_run"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out)
    (out / "results.md").write_text(markdown_table(result) + "\n", encoding="utf-8")
    return result
