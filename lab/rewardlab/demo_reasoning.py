"""The reasoning part of ``rewardserve demo``: one AND over kinds of reward.

Generated arithmetic prompts with known answers, each answered three ways — right but rude, wrong but
polite, right and polite — scored by a service on ``examples/reasoning.yaml`` (a math check, a format
check, and the helpful and harmless reward models) under ``raw_sum`` and ``lsc_sum``. Under the plain
sum a check's raw score (0 or 1) is one term among the reward models' unbounded raw rewards; under the
AND (Σ log P(good)) a failed check costs log ε, which no amount of politeness pays back. The table
shows what these reward models actually give, whichever way it comes out.
"""

from __future__ import annotations

import random
from importlib import resources
from pathlib import Path
from typing import Any


def example_config_path() -> Path:
    """``reasoning.yaml`` as shipped with ``rewardserve`` (package data; ``examples/reasoning.yaml``
    in the repository is the same file with its head paths relative to ``examples/``)."""
    return Path(str(resources.files("rewardserve") / "data" / "examples" / "reasoning.yaml"))


# how each kind of answer is written: {expr} the question's expression, {value} the answer given
STYLES: dict[str, str] = {
    "right but rude": "Seriously, this is trivial. Do your own homework next time. "
    "{expr} = {value}, so \\boxed{{{value}}}.",
    "wrong but polite": "Great question, I'm glad to help! Working it through carefully, {expr} = {value}. "
    "The answer is \\boxed{{{value}}}. I hope this helps, and feel free to ask anything else!",
    "right and polite": "Happy to help! Working it through carefully, {expr} = {value}. "
    "The answer is \\boxed{{{value}}}. I hope this helps, and feel free to ask anything else!",
}


def arithmetic_items(n: int = 6, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` prompts ``a × b + c`` with their answers as ``label``, each answered in every style of
    ``STYLES`` (the wrong answer is off by a small, plausible amount)."""
    rng = random.Random(seed)
    items: list[dict[str, Any]] = []
    for i in range(n):
        a, b, c = rng.randint(12, 49), rng.randint(11, 29), rng.randint(2, 19)
        expr, answer = f"{a} × {b} + {c}", a * b + c
        prompt = [{"role": "user", "content": f"What is {expr}? Put the final answer in \\boxed{{}}."}]
        for style, text in STYLES.items():
            value = answer + rng.choice([-10, -2, 2, 10]) if style.startswith("wrong") else answer
            items.append(
                {
                    "id": f"{i}:{style}",
                    "prompt": prompt,
                    "response": text.format(expr=expr, value=value),
                    "label": str(answer),
                }
            )
    return items


def compare(url: str, items: list[dict[str, Any]], api_key: str | None = None) -> dict[str, Any]:
    """Score ``items`` under ``raw_sum`` and ``lsc_sum``; per style the mean raw reward of each model and
    the mean aggregate under each method, and per method how often each style is the prompt's best."""
    from rewardclient import RewardClient

    by_method = {}
    with RewardClient(url, api_key=api_key) as rc:
        for method in ("raw_sum", "lsc_sum"):
            by_method[method] = rc.score(items, aggregate={"method": method})
    models = list(by_method["raw_sum"][0].raw)  # every model scores every item here (no label is missing)
    table: dict[str, dict[str, float]] = {}
    for style in STYLES:
        idx = [i for i, it in enumerate(items) if it["id"].endswith(style)]
        row = {m: sum(float(by_method["raw_sum"][i].raw[m] or 0.0) for i in idx) / len(idx) for m in models}
        for method, results in by_method.items():
            row[method] = sum(results[i].aggregate for i in idx) / len(idx)
        table[style] = row
    # per method: how far the wrong answer falls below the prompt's better right answer (mean)
    margin: dict[str, float] = {}
    n_styles = len(STYLES)
    for method, results in by_method.items():
        gaps = []
        for start in range(0, len(items), n_styles):
            right = [results[i].aggregate for i in range(start, start + n_styles) if "right" in items[i]["id"]]
            wrong = [results[i].aggregate for i in range(start, start + n_styles) if "wrong" in items[i]["id"]]
            gaps.append(max(right) - max(wrong))
        margin[method] = sum(gaps) / len(gaps)
    best: dict[str, dict[str, int]] = {}
    for method, results in by_method.items():
        counts = dict.fromkeys(STYLES, 0)
        n_styles = len(STYLES)
        for start in range(0, len(items), n_styles):
            group = range(start, start + n_styles)
            top = max(group, key=lambda i: results[i].aggregate)
            counts[items[top]["id"].split(":", 1)[1]] += 1
        best[method] = counts
    return {"models": models, "prompts": len(items) // len(STYLES), "mean": table, "best": best, "margin": margin}


def format_table(summary: dict[str, Any]) -> str:
    """The comparison as a Markdown table and one line per method: which style wins how often."""
    models = summary["models"]
    head = ["answer", *[f"{m} (raw)" for m in models], "raw_sum", "lsc_sum"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    for style, row in summary["mean"].items():
        cells = [f"{row[m]:.3f}" for m in models] + [f"{row['raw_sum']:.3f}", f"{row['lsc_sum']:.3f}"]
        lines.append(f"| {style} | " + " | ".join(cells) + " |")
    lines.append("")
    for method, counts in summary["best"].items():
        wins = ", ".join(f"{style} {n}" for style, n in counts.items())
        lines.append(f"best answer of each of the {summary['prompts']} prompts under {method}: {wins}")
    for method, gap in summary["margin"].items():
        lines.append(f"{method}: the better right answer minus the wrong one, mean over prompts: {gap:+.3f}")
    return "\n".join(lines)
