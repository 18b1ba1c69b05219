"""Closed-loop load against a peer engine (``python -m bench.peer_load``): ``bench.load``'s clients,
with the request body of vLLM's pooling server.

``--api rewardserve`` is ``python -m bench.load`` as it is (``POST /v1/score`` with the workload's
text items). ``--api vllm`` sends the same items as **token ids** (``--ids FILE``: one list of ids
per pool item, the ids rewardserve builds for it) to ``POST /classify`` with
``use_activation: false``, so vLLM scores exactly the sequences rewardserve scores and answers the
score head's raw logit. ``--api vllm-judge`` sends the ids of a judge's rendered input to vLLM's
generate runner (``POST /v1/completions``, ``judge_body``: one token, the full-vocabulary log-probs
of the yes/no ids ``--yes-ids`` / ``--no-ids``). A request carries ``--size`` consecutive pool items in both cases (one
prompt's G responses for the grpo workloads). Prints one JSON object like ``bench.load``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
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


def judge_body(model: str, ids: list[list[int]], yes: list[int], no: list[int]) -> dict:
    """vLLM's ``/v1/completions`` request for a judge's next-token answer on pre-tokenized prompts:
    one greedy token, and the **raw** (full-vocabulary, before any sampling processing) log-probs of
    exactly the yes and no token ids (``logprob_token_ids``; ``logprobs`` must be set with it: their
    number), keyed ``token_id:N`` so no two ids can collide as decoded strings."""
    wanted = [*yes, *no]
    return {
        "model": model,
        "prompt": ids,
        "max_tokens": 1,
        "temperature": 0.0,
        "logprobs": len(wanted),
        "logprob_token_ids": wanted,
        "return_tokens_as_token_ids": True,
    }


def _logsumexp(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def judge_rewards(body: dict, yes: list[int], no: list[int]) -> list[float]:
    """The judge's raw reward of each prompt of a ``/v1/completions`` answer, in prompt order:
    logsumexp(yes log-probs) − logsumexp(no log-probs) of the first generated position (the
    full-vocabulary normaliser cancels, as in the service's yes/no head)."""
    out = []
    for choice in sorted(body["choices"], key=lambda c: c["index"]):
        top = choice["logprobs"]["top_logprobs"][0]
        lp = {int(k.rsplit(":", 1)[1]): float(v) for k, v in top.items()}
        out.append(_logsumexp([lp[t] for t in yes]) - _logsumexp([lp[t] for t in no]))
    return out


class VllmLoad(Load):
    """``bench.load.Load`` whose requests are vLLM ``/classify`` bodies of pre-tokenized items."""

    def __init__(
        self,
        url: str,
        ids: list[list[int]],
        size: int,
        concurrency: int,
        model: str,
        align: int = 1,
        labels: tuple[list[int], list[int]] | None = None,
    ):
        path = "/classify" if labels is None else "/v1/completions"
        super().__init__(url, [{}] * len(ids), size, concurrency, None, path, align)
        self.ids, self.model, self.labels = ids, model, labels

    def body(self, batch: list[list[int]]) -> dict:
        if self.labels is None:
            return classify_body(self.model, batch)
        return judge_body(self.model, batch, *self.labels)

    def raw_request(self, start: int) -> bytes:
        raw = self._bodies.get(start)
        if raw is None:
            n = len(self.ids)
            batch = [self.ids[(start + i) % n] for i in range(self.size)]
            body = json.dumps(self.body(batch), separators=(",", ":")).encode()
            head = (
                f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            raw = self._bodies[start] = head + body
        return raw


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.peer_load", description=__doc__.split("\n\n")[0])
    p.add_argument("--api", choices=("rewardserve", "vllm", "vllm-judge"), default="rewardserve")
    p.add_argument("--url", required=True)
    p.add_argument("--workload", required=True, help="grpo1/4/8/16, mixed, … (bench/workload.py)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pool", type=int, default=256)
    p.add_argument("--ids", default=None, help="--api vllm: JSON file, one list of token ids per pool item")
    p.add_argument("--model-name", default=None, help="--api vllm: the served model name")
    p.add_argument("--yes-ids", type=_ints, default=None, help="--api vllm-judge: the yes token ids, 1,2,…")
    p.add_argument("--no-ids", type=_ints, default=None, help="--api vllm-judge: the no token ids")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--size", type=int, default=1)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--max-seconds", type=float, default=None)
    a = p.parse_args(argv)
    if a.api != "rewardserve" and not (a.ids and a.model_name):
        p.error(f"--api {a.api} needs --ids and --model-name")
    if a.api == "vllm-judge" and not (a.yes_ids and a.no_ids):
        p.error("--api vllm-judge needs --yes-ids and --no-ids")
    return a


async def _amain(a: argparse.Namespace) -> dict:
    ws = spec(a.workload)
    load: Load
    if a.api != "rewardserve":
        with open(a.ids, encoding="utf-8") as f:
            ids = json.load(f)
        if len(ids) != a.pool:
            raise SystemExit(f"{a.ids}: {len(ids)} sequences, --pool is {a.pool}")
        labels = (a.yes_ids, a.no_ids) if a.api == "vllm-judge" else None
        load = VllmLoad(a.url, ids, a.size, a.concurrency, a.model_name, align=ws.group, labels=labels)
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
