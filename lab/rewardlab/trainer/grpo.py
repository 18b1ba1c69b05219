"""RLHF of a causal-LM policy against a running rewardserve, with TRL's GRPOTrainer.

One readable file: every hyperparameter is a field of ``RLHFConfig`` (also the command-line flags
of ``rewardserve rlhf``), metrics are written every step. The policy is KL-regularised to its
initial weights (``beta`` > 0); rewards come from the service in batches via
``rewardclient.trl.RewardServeReward``.

``scale_rewards="none"`` by default: GRPO's default divides each group's advantages by the group's
reward standard deviation, which rescales rewards per prompt. That undoes the point of the LSC
transformation — its bounded, saturating scale (little gain above the reference, large gain from
fixing bad outputs) is exactly what the policy should see — and would make ``lsc_sum`` and
``raw_sum`` runs differ by more than the utility being compared. Advantages are still centred per group.

Outputs, in ``out_dir``: ``config.json``, ``metrics.jsonl`` (per step: mean raw and transformed
reward per model, aggregate, KL, mean completion length, reward-call latency and items/s),
``rewards.png``, ``kl.png``, ``length.png`` and ``report.md``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rewardclient.protocol import DEFAULT_AGGREGATE, AggregateMethod


def _doc(text: str) -> dict[str, str]:
    return {"description": text}


@dataclass
class RLHFConfig:
    """Every hyperparameter of one RLHF run (also the options of ``rewardserve rlhf``)."""

    url: str = field(default="http://127.0.0.1:8000", metadata=_doc("the rewardserve service that scores completions"))
    policy: str | None = field(
        default=None,
        metadata=_doc("the policy to train: folder, hub id or .gguf file (default: SmolLM2-135M-Instruct)"),
    )
    prompts: str = field(
        default="../shared/data/prompts.jsonl.gz",
        metadata=_doc("training prompts: prompts.jsonl(.gz) (objects with 'prompt') or JSON Lines of strings"),
    )
    split: str | None = field(default="train", metadata=_doc("only prompts of this split, when the file has one"))
    max_prompts: int | None = field(default=256, metadata=_doc("use the first N prompts"))
    utility: AggregateMethod = field(
        default=DEFAULT_AGGREGATE,
        metadata=_doc("what the policy maximises: lsc_sum (log P(good on every property)), raw_sum or min"),
    )
    models: list[str] | None = field(default=None, metadata=_doc("reward models to combine (default: all served)"))
    beta: float = field(default=0.05, metadata=_doc("KL coefficient to the initial policy (> 0)"))
    scale_rewards: str = field(
        default="none",
        metadata=_doc(
            "GRPO's advantage scaling: none keeps the utility's own scale (advantages are still centred per group); "
            "group or batch divide by the reward standard deviation"
        ),
    )
    learning_rate: float = field(default=1e-5, metadata=_doc("optimizer learning rate"))
    steps: int = field(default=4, metadata=_doc("optimizer steps"))
    prompts_per_step: int = field(default=2, metadata=_doc("distinct prompts per step"))
    num_generations: int = field(default=4, metadata=_doc("completions per prompt (the GRPO group)"))
    max_completion_length: int = field(default=48, metadata=_doc("longest completion, in policy tokens"))
    temperature: float = field(default=0.9, metadata=_doc("sampling temperature of the completions"))
    seed: int = field(default=0, metadata=_doc("seed of sampling and training"))
    out_dir: str = field(default="runs/rlhf", metadata=_doc("where config.json, metrics.jsonl, plots and report.md go"))
    api_key: str | None = field(default=None, metadata=_doc("API key of the service (default: $REWARDSERVE_API_KEY)"))
    reference_set: str | None = field(
        default=None,
        metadata=_doc("the service's reference set: one base policy's calibration (default: the set 'default')"),
    )
    sample_prompts: int = field(default=3, metadata=_doc("prompts whose final completions go into report.md"))
    eval_prompts: int = field(
        default=4,
        metadata=_doc(
            "fixed evaluation prompts (the first N of the prompt file) scored before and after training, "
            "so the report compares the same prompts (0: no evaluation)"
        ),
    )
    eval_samples: int = field(default=4, metadata=_doc("completions per evaluation prompt, before and after"))
    extra: dict[str, Any] = field(default_factory=dict)


def _load_dataset(cfg: RLHFConfig):
    from datasets import Dataset

    from ..datasets import load_prompts

    prompts = load_prompts(cfg.prompts, split=cfg.split, limit=cfg.max_prompts)
    # conversational prompts for TRL: a list of messages (plain strings become one user message)
    rows = [{"prompt": p if isinstance(p, list) else [{"role": "user", "content": p}]} for p in prompts]
    return Dataset.from_list(rows)


def run_rlhf(cfg: RLHFConfig, after_train: Callable[[Any], dict] | None = None) -> dict:
    """Train; ``after_train(trainer)``, when given, runs on the trained policy before it is freed and its
    result is returned under ``"after_train"`` (experiments evaluate the policy there)."""
    import torch
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
    from trl import GRPOConfig, GRPOTrainer

    from rewardclient.trl import RewardServeReward

    from ..policy import policy_id, resolve_policy_path

    if cfg.beta <= 0:
        raise ValueError("beta must be > 0: the policy is KL-regularised to its initial weights")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    torch.manual_seed(cfg.seed)
    reward = RewardServeReward(
        cfg.url, models=cfg.models, aggregate=cfg.utility, api_key=cfg.api_key, reference_set=cfg.reference_set
    )
    policy_path = resolve_policy_path(cfg.policy)
    batch = cfg.prompts_per_step * cfg.num_generations
    args = GRPOConfig(
        output_dir=str(out / "trainer"),
        max_steps=cfg.steps,
        learning_rate=cfg.learning_rate,
        beta=cfg.beta,
        scale_rewards=cfg.scale_rewards,
        num_generations=cfg.num_generations,
        per_device_train_batch_size=batch,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        seed=cfg.seed,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(),
        log_completions=False,
        disable_tqdm=False,
    )
    metrics_path = out / "metrics.jsonl"
    metrics_path.write_text("")
    rows: list[dict] = []

    class _Recorder(TrainerCallback):
        def on_log(
            self,
            args: TrainingArguments,
            state: TrainerState,
            control: TrainerControl,
            logs: dict[str, Any] | None = None,
            **kwargs: Any,
        ) -> None:
            if not logs or "loss" not in logs and "kl" not in logs:
                return
            row = {
                "step": state.global_step,
                "time": time.time(),
                **{k: v for k, v in logs.items() if isinstance(v, (int, float))},
            }
            rows.append(row)
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    trainer = GRPOTrainer(
        model=policy_path,
        reward_funcs=[reward],
        args=args,
        train_dataset=_load_dataset(cfg),
        callbacks=[_Recorder()],
    )
    eval_before = _evaluate(trainer, cfg, reward)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    eval_after = _evaluate(trainer, cfg, reward)
    samples = _final_samples(trainer, cfg)
    summary = {
        "policy": policy_id(cfg.policy),
        "utility": cfg.utility,
        "steps": cfg.steps,
        "wall_seconds": wall,
        "out_dir": str(out),
        "first": rows[0] if rows else {},
        "last": rows[-1] if rows else {},
        "rows": rows,
        "eval": _compare(eval_before, eval_after),
    }
    if after_train is not None:
        summary["after_train"] = after_train(trainer)
    _plots(rows, out)
    _report(cfg, summary, rows, samples, out)
    return summary


def generate_with(
    trainer, prompts: list, k: int, max_new_tokens: int, temperature: float, top_p: float, batch_prompts: int = 32
) -> list[list[str]]:
    """``k`` samples per prompt from the trainer's current policy (left padding for generation)."""
    import torch

    from ..policy import generate

    model, tok = trainer.model, trainer.processing_class
    side, training = tok.padding_side, model.training
    tok.padding_side = "left"
    try:
        model.eval()
        out: list[list[str]] = []
        with torch.inference_mode():
            for s in range(0, len(prompts), batch_prompts):
                out += generate(model, tok, prompts[s : s + batch_prompts], k, max_new_tokens, temperature, top_p)
        return out
    finally:
        tok.padding_side = side
        model.train(training)


def _evaluate(trainer, cfg: RLHFConfig, reward: Any) -> list[list[float]] | None:
    """The utility the policy maximises (the service's aggregate) on the fixed evaluation prompts:
    ``eval_samples`` completions of each of the first ``eval_prompts`` prompts, sampled with one seed
    so that before and after differ by the policy alone, scored like training batches."""
    import torch

    n = min(cfg.eval_prompts, len(trainer.train_dataset))
    if n <= 0 or cfg.eval_samples <= 0:
        return None
    prompts = [trainer.train_dataset[i]["prompt"] for i in range(n)]
    torch.manual_seed(cfg.seed + 7919)
    texts = generate_with(trainer, prompts, cfg.eval_samples, cfg.max_completion_length, cfg.temperature, 1.0)
    flat = [p for p in prompts for _ in range(cfg.eval_samples)]
    scores = reward(flat, [t for ts in texts for t in ts])
    return [scores[i * cfg.eval_samples : (i + 1) * cfg.eval_samples] for i in range(n)]


def _compare(before: list[list[float]] | None, after: list[list[float]] | None) -> dict | None:
    """Mean utility on the evaluation prompts before and after training, and the paired per-prompt
    difference, each with its 95 % bootstrap interval: what a run of a few steps moved, next to its noise."""
    if before is None or after is None:
        return None
    from ..experiments.stats import bootstrap_ci

    b = [sum(s) / len(s) for s in before]
    a = [sum(s) / len(s) for s in after]
    return {
        "prompts": len(b),
        "samples_per_prompt": len(before[0]),
        "before": bootstrap_ci([x for s in before for x in s]),
        "after": bootstrap_ci([x for s in after for x in s]),
        "difference": bootstrap_ci([y - x for x, y in zip(b, a)]),
        "scores_before": before,
        "scores_after": after,
    }


def _final_samples(trainer, cfg: RLHFConfig) -> list[dict]:
    ds = trainer.train_dataset
    prompts = [ds[i]["prompt"] for i in range(min(cfg.sample_prompts, len(ds)))]
    texts = generate_with(trainer, prompts, 1, cfg.max_completion_length, cfg.temperature, 1.0)
    return [{"prompt": p[-1]["content"], "response": t[0]} for p, t in zip(prompts, texts)]


def _series(rows: list[dict], suffix: str) -> dict[str, list[float | None]]:
    return {k: [r.get(k) for r in rows] for k in sorted({k for r in rows for k in r}) if k.endswith(suffix)}


def _plots(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    for name, keys, ylabel in [
        (
            "rewards",
            list(_series(rows, "/raw")) + list(_series(rows, "/transformed")) + ["rewardserve/aggregate"],
            "reward",
        ),
        ("kl", ["kl"], "KL to the initial policy"),
        ("length", ["completions/mean_length"], "mean completion length (tokens)"),
    ]:
        fig, ax = plt.subplots(figsize=(7, 4))
        for k in keys:
            ys: list[Any] = [r.get(k) for r in rows]  # None where a step has no value: a gap in the line
            if any(y is not None for y in ys):
                ax.plot(steps, ys, marker="o", label=k.replace("rewardserve/", ""))
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=100)
        plt.close(fig)


def _eval_lines(ev: dict | None, cfg: RLHFConfig) -> list[str]:
    if not ev:
        return []

    def cell(c: dict) -> str:
        return f"{c['mean']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}]"

    d = ev["difference"]
    moved = d["lo"] > 0 or d["hi"] < 0
    reading = (
        "The interval of the difference excludes 0: training moved the utility on these prompts."
        if moved
        else "The interval of the difference contains 0: on these prompts the run's change is within its noise "
        "(expected for a run of a few steps)."
    )
    return [
        f"## {cfg.utility} on the same prompts, before and after training",
        "",
        f"{ev['prompts']} fixed prompts × {ev['samples_per_prompt']} completions each, sampled with one seed before "
        "and after training; mean with its 95 % bootstrap interval; the difference is paired per prompt.",
        "",
        "| before | after | after − before |",
        "|---:|---:|---:|",
        f"| {cell(ev['before'])} | {cell(ev['after'])} | {cell(d)} |",
        "",
        reading,
        "",
    ]


def _report(cfg: RLHFConfig, summary: dict, rows: list[dict], samples: list[dict], out: Path) -> None:
    first, last = summary["first"], summary["last"]
    keys = [k for k in sorted(last) if k.startswith("rewardserve/") or k in ("kl", "completions/mean_length", "reward")]
    lines = [
        f"# RLHF run: {cfg.utility}",
        "",
        f"Policy `{summary['policy']}`, {cfg.steps} steps × {cfg.prompts_per_step} prompts × {cfg.num_generations} "
        f"completions, beta {cfg.beta}, lr {cfg.learning_rate}, scale_rewards `{cfg.scale_rewards}`, seed {cfg.seed}. "
        f"Wall time {summary['wall_seconds']:.1f} s. Rewards from {cfg.url}.",
        "",
        *_eval_lines(summary.get("eval"), cfg),
        "## Training batches",
        "",
        "Each step samples different prompts, so the first and last steps' rewards differ by their prompts as "
        "much as by training; the comparison on the same prompts is the one above.",
        "",
        "| metric | first step | last step |",
        "|---|---:|---:|",
        *[f"| {k} | {first.get(k, float('nan')):.4f} | {last.get(k, float('nan')):.4f} |" for k in keys],
        "",
        "![rewards](rewards.png) ![kl](kl.png) ![length](length.png)",
        "",
        "## Samples after training",
        "",
    ]
    for s in samples:
        lines += [f"**Prompt:** {s['prompt'][:300]}", "", f"**Response:** {s['response'][:600]}", ""]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
