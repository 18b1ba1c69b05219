"""Closed-loop load against a peer engine (``python -m bench.peer_load``): ``bench.load``'s clients,
with the request body of vLLM's pooling server.

``--api rewardserve`` is ``python -m bench.load`` as it is (``POST /v1/score`` with the workload's
text items). ``--api vllm`` sends the same items as **token ids** (``--ids FILE``: one list of ids
per pool item, the ids rewardserve builds for it) to ``POST /classify`` with
``use_activation: false``, so vLLM scores exactly the sequences rewardserve scores and answers the
score head's raw logit. A request carries ``--size`` consecutive pool items in both cases (one
prompt's G responses for the grpo workloads). Prints one JSON object like ``bench.load``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from .load import Load
from .stats import emit_json
from .workload import generate, spec


def classify_body(model: str, ids: list[list[int]]) -> dict:
    """vLLM's ``/classify`` request for pre-tokenized sequences: raw logits (no sigmoid/softmax), no
    special tokens added (the ids already carry the chat template's)."""
    return {"model": model, "input": ids, "use_activation": False, "add_special_tokens": False}


def classify_rewards(body: dict) -> list[float]:
    """The raw reward of each input of a ``/classify`` answer, in input order (one-label head)."""
    data = sorted(body["data"], key=lambda d: d["index"])
    return [float(d["probs"][0]) for d in data]


class VllmLoad(Load):
    """``bench.load.Load`` whose requests are vLLM ``/classify`` bodies of pre-tokenized items."""

    def __init__(self, url: str, ids: list[list[int]], size: int, concurrency: int, model: str, align: int = 1):
        super().__init__(url, [{}] * len(ids), size, concurrency, None, "/classify", align)
        self.ids, self.model = ids, model

    def raw_request(self, start: int) -> bytes:
        raw = self._bodies.get(start)
        if raw is None:
            n = len(self.ids)
            batch = [self.ids[(start + i) % n] for i in range(self.size)]
            body = json.dumps(classify_body(self.model, batch), separators=(",", ":")).encode()
            head = (
                f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            raw = self._bodies[start] = head + body
        return raw


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.peer_load", description=__doc__.split("\n\n")[0])
    p.add_argument("--api", choices=("rewardserve", "vllm"), default="rewardserve")
    p.add_argument("--url", required=True)
    p.add_argument("--workload", required=True, help="grpo1/4/8/16, mixed, … (bench/workload.py)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pool", type=int, default=256)
    p.add_argument("--ids", default=None, help="--api vllm: JSON file, one list of token ids per pool item")
    p.add_argument("--model-name", default=None, help="--api vllm: the served model name")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--size", type=int, default=1)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--max-seconds", type=float, default=None)
    a = p.parse_args(argv)
    if a.api == "vllm" and not (a.ids and a.model_name):
        p.error("--api vllm needs --ids and --model-name")
    return a


async def _amain(a: argparse.Namespace) -> dict:
    ws = spec(a.workload)
    load: Load
    if a.api == "vllm":
        with open(a.ids, encoding="utf-8") as f:
            ids = json.load(f)
        if len(ids) != a.pool:
            raise SystemExit(f"{a.ids}: {len(ids)} sequences, --pool is {a.pool}")
        load = VllmLoad(a.url, ids, a.size, a.concurrency, a.model_name, align=ws.group)
    else:
        load = Load(a.url, generate(ws, a.pool, a.seed), a.size, a.concurrency, None, align=ws.group)
    res = await load.run_timed(a.seconds, a.warmup, a.max_seconds)
    res["workload"] = a.workload
    res["api"] = a.api
    # every answered request, warm-up included: more items than the pool means some were sent twice
    res["items_sent"] = len(load.records) * a.size
    res["pool"] = a.pool
    return res


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        import uvloop

        res = uvloop.run(_amain(a))
    except ImportError:
        res = asyncio.run(_amain(a))
    emit_json(res, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
