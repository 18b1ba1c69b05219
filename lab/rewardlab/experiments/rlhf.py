"""Experiment B: short RLHF runs, ``raw_sum`` vs ``lsc_sum``, at two KL strengths and several seeds.

Every run trains the base policy with the trainer client (TRL GRPO) against one rewardserve service,
identical except for the utility, beta and seed. Train prompts get per-prompt references calibrated
through the service (``rewardserve calibrate``'s code) from base samples, so the ``lsc_sum`` runs see
u = log σ(r − r_ref(x)) as the paper does.

Evaluation reuses experiment A's held-out prompts: their base-policy response (A's first candidate,
sampled with the same settings) and their references (A's calibration samples). For each trained
policy: one response per held-out prompt, scored by the same service; win rate against the base
response per model, "good on all" (above the reference on every model), response-length drift, the
KL logged during training, and a few responses. Runs that finished are not rerun.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rewardclient.protocol import DEFAULT_QUANTILE, AggregateMethod

from . import stats
from .best_of_k import arrays, doc, equal_shares, select_prompts


@dataclass
class RLHFExperimentConfig:
    """Experiment B's settings (also the options of ``rewardserve experiment rlhf``)."""

    best_of_k_dir: str = field(
        default="runs/experiments/best-of-k",
        metadata=doc("experiment A's output: its held-out prompts, base responses and references"),
    )
    eval_prompts: int = field(default=64, metadata=doc("held-out prompts to evaluate on, equal shares per source"))
    prompts: str = field(
        default="../shared/data/prompts.jsonl.gz", metadata=doc("prompts.jsonl(.gz) the training prompts come from")
    )
    train_prompts: int = field(default=64, metadata=doc("train-split prompts, equal shares per source"))
    max_prompt_tokens: int = field(default=128, metadata=doc("skip prompts longer than this (rendered, policy tokens)"))
    policy: str | None = field(
        default=None, metadata=doc("the base policy: folder, hub id or .gguf file (default: SmolLM2-135M-Instruct)")
    )
    utilities: list[AggregateMethod] = field(
        default_factory=lambda: ["raw_sum", "lsc_sum"],
        metadata=doc("the utilities to compare: one run per utility, beta and seed"),
    )
    betas: list[float] = field(
        default_factory=lambda: [0.02, 0.2], metadata=doc("KL coefficients to the initial policy")
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1], metadata=doc("training seeds"))
    steps: int = field(
        default=10, metadata=doc("optimizer steps per run (a step trains on 4 sequences: ≈ 20 s on 2 CPU cores)")
    )
    learning_rate: float = field(default=1e-4, metadata=doc("optimizer learning rate"))
    prompts_per_step: int = field(default=1, metadata=doc("distinct prompts per step"))
    num_generations: int = field(default=4, metadata=doc("completions per prompt (the GRPO group)"))
    max_completion_length: int = field(
        default=48, metadata=doc("longest completion, in policy tokens (must match experiment A's max_new_tokens)")
    )
    temperature: float = field(default=0.7, metadata=doc("sampling temperature of training and evaluation"))
    top_p: float = field(default=0.9, metadata=doc("nucleus sampling top-p of evaluation (as experiment A)"))
    calibration_samples: int = field(
        default=8, metadata=doc("base-policy samples per training prompt for its reference")
    )
    quantile: float = field(
        default=DEFAULT_QUANTILE, metadata=doc("the reference is this quantile of the calibration samples")
    )
    url: str | None = field(default=None, metadata=doc("a running service (default: start one with config)"))
    config: str | None = field(
        default=None, metadata=doc("service config with the reward models (default: the embedded default)")
    )
    models: list[str] | None = field(default=None, metadata=doc("reward models to combine (default: every configured)"))
    bootstrap: int = field(default=1000, metadata=doc("bootstrap resamples over prompts for the 95% intervals"))
    out_dir: str = field(default="runs/experiments/rlhf", metadata=doc("where each run and the results go"))


def _eval_set(cfg: RLHFExperimentConfig) -> tuple[list[dict], list[str], dict]:
    a_dir = Path(cfg.best_of_k_dir)
    meta = json.loads((a_dir / "meta.json").read_text())
    rows = [
        json.loads(line) for line in (a_dir / "samples.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    rows.sort(key=lambda r: r["index"])
    by_source: dict[str, list[dict]] = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(r)
    chosen = equal_shares(by_source, cfg.eval_prompts)
    if (
        meta["max_new_tokens"] != cfg.max_completion_length
        or meta["temperature"] != cfg.temperature
        or meta["top_p"] != cfg.top_p
    ):
        raise ValueError(
            "evaluation sampling must match experiment A's (max_new_tokens, temperature, top_p): "
            f"A used {meta['max_new_tokens']}, {meta['temperature']}, {meta['top_p']}"
        )
    return chosen, meta["models"], meta


def evaluate_policy(
    trainer, url: str, eval_rows: list[dict], models: list[str], cfg: RLHFExperimentConfig, seed: int
) -> dict:
    """Per-prompt raw rewards of one response per held-out prompt from the trained policy, with the base
    response's rewards and the references, ready for ``summarise``."""
    import torch

    from rewardclient import RewardClient

    from ..trainer.grpo import generate_with

    torch.manual_seed(10_007 + seed)
    prompts = [r["prompt"] for r in eval_rows]
    texts = [t[0] for t in generate_with(trainer, prompts, 1, cfg.max_completion_length, cfg.temperature, cfg.top_p)]
    tok = trainer.processing_class
    zero = dict.fromkeys(models, 0.0)
    with RewardClient(url) as rc:
        results = rc.score(
            [{"prompt": p, "response": t, "reference": zero} for p, t in zip(prompts, texts)], models=models
        )
    return {
        "responses": texts,
        "raw": [[r.raw[m] for m in models] for r in results],
        "lengths": [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts],
    }


def run_metrics(ev: dict, eval_rows: list[dict], models: list[str], quantile: float) -> dict[str, np.ndarray]:
    """Per-prompt values: win (1, ½ on a tie, 0) against the base response per model, good on all,
    base good on all, length drift."""
    raw = np.asarray(ev["raw"], dtype=float)
    cand, calib, lengths = arrays(eval_rows, models)
    base = cand[:, 0]  # the base policy's first candidate
    ref = stats.references(calib, quantile)
    return {
        "win": (raw > base) + 0.5 * (raw == base),
        "good_on_all": np.all(raw > ref, axis=1).astype(float),
        "base_good_on_all": np.all(base > ref, axis=1).astype(float),
        "length_drift": np.asarray(ev["lengths"], dtype=float) - lengths[:, 0],
    }


def _kl(rows: list[dict], last: int = 5) -> float | None:
    kls = [r["kl"] for r in rows if r.get("kl") is not None]
    return float(np.mean(kls[-last:])) if kls else None


def summarise(runs: list[dict], eval_rows: list[dict], models: list[str], quantile: float, n_boot: int) -> list[dict]:
    """Per (utility, beta): metrics pooled over seeds (bootstrap over prompt × seed) and per seed."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["utility"], r["beta"]), []).append(r)
    out = []
    for (utility, beta), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        per = [run_metrics(r["eval"], eval_rows, models, quantile) for r in rs]
        pooled = {k: np.concatenate([p[k] for p in per]) for k in per[0]}
        out.append(
            {
                "utility": utility,
                "beta": beta,
                "seeds": [r["seed"] for r in rs],
                "win_rate": {m: stats.bootstrap_ci(pooled["win"][:, i], n_boot) for i, m in enumerate(models)},
                "good_on_all": stats.bootstrap_ci(pooled["good_on_all"], n_boot),
                "base_good_on_all": stats.bootstrap_ci(pooled["base_good_on_all"], n_boot),
                "length_drift": stats.bootstrap_ci(pooled["length_drift"], n_boot),
                "kl": [_kl(r["rows"]) for r in rs],
                "per_seed": [
                    {
                        "seed": r["seed"],
                        "win_rate": {m: float(p["win"][:, i].mean()) for i, m in enumerate(models)},
                        "good_on_all": float(p["good_on_all"].mean()),
                        "length_drift": float(p["length_drift"].mean()),
                        "kl": _kl(r["rows"]),
                        "wall_seconds": r["wall_seconds"],
                    }
                    for r, p in zip(rs, per)
                ],
            }
        )
    return out


def _fmt(ci: dict, d: int = 3) -> str:
    return f"{ci['mean']:.{d}f} [{ci['lo']:.{d}f}, {ci['hi']:.{d}f}]"


def markdown(summary: list[dict], models: list[str]) -> str:
    head = [
        "utility",
        "beta",
        *[f"win rate vs base, {m}" for m in models],
        "good on all (base)",
        "length drift (tokens)",
        "KL (last 5 steps, per seed)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in summary:
        kl = ", ".join("–" if k is None else f"{k:.4f}" for k in g["kl"])
        lines.append(
            "| "
            + " | ".join(
                [
                    g["utility"],
                    f"{g['beta']:g}",
                    *[_fmt(g["win_rate"][m]) for m in models],
                    f"{_fmt(g['good_on_all'])} ({g['base_good_on_all']['mean']:.3f})",
                    _fmt(g["length_drift"], 1),
                    kl,
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def plot(runs: list[dict], summary: list[dict], models: list[str], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(models) + 2, figsize=(4 * (len(models) + 2), 3.6))
    labels = [f"{g['utility']}\nβ={g['beta']:g}" for g in summary]
    colors = ["tab:orange" if g["utility"] == "raw_sum" else "tab:blue" for g in summary]
    panels = [(f"win rate vs base: {m}", lambda g, m=m: g["win_rate"][m]) for m in models] + [
        ("good on all", lambda g: g["good_on_all"])
    ]
    for ax, (title, get) in zip(axes, panels):
        cis = [get(g) for g in summary]
        ax.bar(
            range(len(summary)),
            [c["mean"] for c in cis],
            color=colors,
            yerr=[[c["mean"] - c["lo"] for c in cis], [c["hi"] - c["mean"] for c in cis]],
            capsize=3,
        )
        if title.startswith("win"):
            ax.axhline(0.5, color="gray", lw=0.8, ls="--")
        ax.set_xticks(range(len(summary)), labels, fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    ax = axes[-1]
    for r in runs:
        steps = [x["step"] for x in r["rows"] if x.get("kl") is not None]
        ax.plot(
            steps,
            [x["kl"] for x in r["rows"] if x.get("kl") is not None],
            color="tab:orange" if r["utility"] == "raw_sum" else "tab:blue",
            ls="-" if r["beta"] == min(x["beta"] for x in runs) else "--",
            alpha=0.8,
            lw=1,
        )
    ax.set_title("KL during training (solid: smaller β)", fontsize=9)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "rlhf.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _write_train_prompts(cfg: RLHFExperimentConfig, out: Path) -> Path:
    from transformers import AutoTokenizer

    from ..policy import resolve_policy_path

    tok = AutoTokenizer.from_pretrained(resolve_policy_path(cfg.policy))
    chosen = select_prompts(cfg.prompts, "train", cfg.train_prompts, tok, cfg.max_prompt_tokens)
    path = out / "train_prompts.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": c["prompt"], "source": c["source"]}) + "\n" for c in chosen), encoding="utf-8"
    )
    return path


def run_rlhf_experiment(cfg: RLHFExperimentConfig) -> dict:
    from contextlib import nullcontext

    from rewardserve.service_process import ServiceProcess

    from ..calibration import CalibrationConfig, calibrate
    from ..trainer import RLHFConfig, run_rlhf

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    eval_rows, a_models, _ = _eval_set(cfg)
    models = cfg.models or a_models
    t0 = time.perf_counter()
    service = (
        nullcontext()
        if cfg.url
        else ServiceProcess(
            cfg.config, env={"REWARDSERVE_REFERENCES__STORE": f"sqlite:///{(out / 'references.db').resolve()}"}
        )
    )
    with service as svc:
        if cfg.url:
            url = cfg.url
        else:
            assert svc is not None  # started above: no url was given
            url = svc.url
        train_file = _write_train_prompts(cfg, out)
        cal = calibrate(
            CalibrationConfig(
                prompts=str(train_file),
                url=url,
                policy=cfg.policy,
                samples=cfg.calibration_samples,
                quantile=cfg.quantile,
                models=models,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                max_new_tokens=cfg.max_completion_length,
                batch_prompts=8,
                log=str(out / "calibration.jsonl"),
            )
        )
        runs = []
        for beta in cfg.betas:
            for utility in cfg.utilities:
                for seed in cfg.seeds:
                    run_dir = out / f"{utility}-beta{beta:g}-seed{seed}"
                    done = run_dir / "result.json"
                    if done.exists():
                        runs.append(json.loads(done.read_text()))
                        continue
                    rcfg = RLHFConfig(
                        url=url,
                        policy=cfg.policy,
                        prompts=str(train_file),
                        split=None,
                        max_prompts=None,
                        utility=utility,
                        models=models,
                        beta=beta,
                        learning_rate=cfg.learning_rate,
                        steps=cfg.steps,
                        prompts_per_step=cfg.prompts_per_step,
                        num_generations=cfg.num_generations,
                        max_completion_length=cfg.max_completion_length,
                        temperature=cfg.temperature,
                        seed=seed,
                        out_dir=str(run_dir),
                    )
                    s = run_rlhf(
                        rcfg,
                        after_train=functools.partial(
                            evaluate_policy, url=url, eval_rows=eval_rows, models=models, cfg=cfg, seed=seed
                        ),
                    )
                    run = {
                        "utility": utility,
                        "beta": beta,
                        "seed": seed,
                        "wall_seconds": s["wall_seconds"],
                        "rows": s["rows"],
                        "eval": s["after_train"],
                    }
                    done.write_text(json.dumps(run) + "\n")
                    runs.append(run)
    summary = summarise(runs, eval_rows, models, cfg.quantile, cfg.bootstrap)
    result = {
        "config": dataclasses.asdict(cfg),
        "models": models,
        "eval_prompts": len(eval_rows),
        "calibration": cal.to_dict(),
        "summary": summary,
        "wall_seconds_this_run": time.perf_counter() - t0,
        "training_seconds": sum(r["wall_seconds"] for r in runs),
    }
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(runs, summary, models, out)
    lines = [
        markdown(summary, models),
        "",
        f"## Responses at the end of training (first held-out prompts, seed {cfg.seeds[0]})",
        "",
    ]
    for r in runs:
        if r["seed"] != cfg.seeds[0]:
            continue
        lines += [f"### {r['utility']}, beta {r['beta']:g}", ""]
        for row, text in list(zip(eval_rows, r["eval"]["responses"]))[:3]:
            prompt = row["prompt"] if isinstance(row["prompt"], str) else row["prompt"][-1]["content"]
            lines += [f"- **{prompt[:160]}** → {text[:300]!r}"]
        lines.append("")
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return result
