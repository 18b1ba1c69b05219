"""The one-GPU benchmark (``python -m bench.gpu``; ``bench/gpu.sh`` runs it on a fresh machine).

The question: how does an 8B Llama-style reward model in bfloat16 (Skywork-Reward-V2-Llama-3.1-8B
class) serve GRPO traffic on one GPU? The model is built here from its config with random weights
(same FLOPs and memory as the real one; throughput does not depend on the weights; no download),
saved as a real checkpoint and loaded the way the service loads it (``build_backend``: straight to
the device). Then, in one process, the service's batcher and backend (no HTTP: on an 8B the
forward is the cost) run closed-loop cells:

- ``grpo{G}`` (G = 8, 16, 64): one request = one prompt of 1000–2000 words (one token each with the
  benchmark's word tokenizer) and its G responses of 50–400 tokens;
- ``distinct``: one request = 8 items, each with its own prompt of the same lengths;

each with prompt sharing on and off (the same loaded model: only the backend's flag changes).
Per cell: items/s, tokens/s (the items' tokens), request latency p50/p99, peak GPU memory
(``torch.cuda.max_memory_allocated``), forwards, out-of-memory splits and rejected requests. With
``--shape tiny`` the same code path builds a 2-layer model and runs short cells (the dry run on a
CPU). One table on stdout, one JSON (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

# model shapes: Llama-3.1-8B's (the GPU question) and a tiny one (the CPU dry run)
SHAPES: dict[str, dict[str, Any]] = {
    "8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
    ),
}
VOCAB = 128256  # Llama 3's: the embedding and its memory as in the real model


def build_model(out: Path, shape: str, dtype: str, device: str, seed: int = 0) -> dict[str, Any]:
    """A Llama sequence classifier (1 label) of ``shape`` with random weights, built on ``device`` in
    ``dtype`` and saved to ``out`` with the benchmark's word-level tokenizer and chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from rewardlab.tiny_models import word_tokenizer
    from rewardserve.backends.base import DTYPES

    tok = word_tokenizer(chat_template=True)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **SHAPES[shape],
    )
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(DTYPES[dtype])  # the weights are made in bf16: 16 GB for an 8B, never 32
    try:
        with torch.device(device):
            model = LlamaForSequenceClassification(cfg)
    finally:
        torch.set_default_dtype(previous)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    return {"params": n_params, "weights_bytes": size, "build_seconds": time.perf_counter() - t0}


@functools.cache
def _vocabulary() -> tuple[str, ...]:
    from rewardlab.tiny_models import word_tokenizer

    return tuple(sorted(w for w in word_tokenizer().get_vocab() if not w.startswith("<")))


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(_vocabulary(), k=n))


def make_requests(kind: str, n: int, seed: int, prompt: tuple[int, int], response: tuple[int, int]) -> list[list]:
    """``n`` requests of (prompt, response) items: ``grpoG`` one prompt's G responses, ``distinct``
    8 items with a prompt each (words of the tokenizer's vocabulary: one token each)."""
    rng = random.Random(f"{kind}-{seed}")
    out = []
    for _ in range(n):
        if kind.startswith("grpo"):
            p = _words(rng, rng.randint(*prompt))
            out.append([(p, _words(rng, rng.randint(*response))) for _ in range(int(kind[4:]))])
        else:
            out.append([(_words(rng, rng.randint(*prompt)), _words(rng, rng.randint(*response))) for _ in range(8)])
    return out


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


async def run_cell(backend: Any, settings: Any, requests: list[list], concurrency: int, seconds: float) -> dict:
    """Closed loop: ``concurrency`` clients each submit a request (its items encoded beforehand),
    await its rewards, and submit the next, for ``seconds`` (at least one request each)."""
    import torch

    from rewardserve.batcher import Batcher
    from rewardserve.errors import Overloaded

    cfg = settings.backbones["rm"]
    b = settings.batching
    cuda = backend.device.type == "cuda"
    threads = None if cuda else torch.get_num_threads()
    batcher = Batcher(
        backend,
        max_batch_tokens=b.batch_tokens_for(cfg.device),
        max_wait_ms=b.max_wait_ms,
        max_queued_tokens=b.queued_tokens_for(cfg.device),
        sort_by_length=b.sort_by_length,
        max_padding_ratio=b.padding_ratio_for(cfg.device),
        forward_workers=b.workers_for(cfg.device, threads or 1),
        cpu_threads=threads,
    )
    encoded = [[backend.encode(p, r) for p, r in req] for req in requests]
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    batcher.start()
    lat: list[float] = []
    items = tokens = rejected = 0
    stop = time.perf_counter() + seconds
    nxt = 0

    async def client() -> None:
        nonlocal items, tokens, rejected, nxt
        done_one = False
        while not done_one or time.perf_counter() < stop:
            encs = encoded[nxt % len(encoded)]
            nxt += 1
            t0 = time.perf_counter()
            while True:
                try:
                    futures = batcher.submit(encs)
                    break
                except Overloaded as e:
                    rejected += 1
                    await asyncio.sleep(min(e.retry_after or 1.0, 5.0))
            await asyncio.gather(*futures)
            lat.append(time.perf_counter() - t0)
            items += len(encs)
            tokens += sum(e.length for e in encs)
            done_one = True

    t_start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - t_start
    await batcher.stop()
    peak = torch.cuda.max_memory_allocated() if cuda else None
    return {
        "requests": len(lat),
        "items": items,
        "seconds": wall,
        "items_per_s": items / wall,
        "tokens_per_s": tokens / wall,
        "p50_s": _pct(lat, 0.5),
        "p99_s": _pct(lat, 0.99),
        "peak_gpu_bytes": peak,
        "forwards": batcher.forwards,
        "rejected": rejected,
        "max_batch_tokens": batcher.max_batch_tokens,
    }


class _CountSplits(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.splits = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.splits += "ran out of memory" in record.getMessage()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--work", required=True, help="folder for the model (kept: the peer benchmark loads it)")
    ap.add_argument("--groups", default="8,16,64")
    ap.add_argument("--prompt-words", default="1000,2000")
    ap.add_argument("--response-words", default="50,400")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per cell")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    ap.add_argument("--max-length", type=int, default=4096)
    ap.add_argument("--out", default="bench/results/gpu.json")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    splits = _CountSplits()
    logging.getLogger("rewardserve.oom").addHandler(splits)
    import torch

    from rewardserve.backends import build_backend, describe_settings
    from rewardserve.config import Settings

    work = Path(a.work)
    model_dir = work / f"llama-{a.shape}-rm"
    prompt = tuple(int(x) for x in a.prompt_words.split(","))
    response = tuple(int(x) for x in a.response_words.split(","))
    result: dict[str, Any] = {
        "shape": a.shape,
        "device": a.device,
        "dtype": a.dtype,
        "gpu": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else None,
        "torch": torch.__version__,
        "model_dir": str(model_dir),
        "workloads": {"prompt_words": prompt, "response_words": response, "concurrency": a.concurrency},
    }
    if not (model_dir / "config.json").exists():
        result["build"] = build_model(model_dir, a.shape, a.dtype, a.device)
    settings = Settings(
        references={"store": f"sqlite:///{work / 'refs.db'}"},
        backbones={
            "rm": {
                "kind": "sequence_classifier",
                "path": str(model_dir),
                "device": a.device,
                "dtype": a.dtype,
                "max_length": a.max_length,
                "models": {"rm": {"transform": "identity"}},
            }
        },
    )
    print(f"bench.gpu: {describe_settings(settings.backbones['rm'], settings)}", file=sys.stderr)
    rss0, t0 = peak_rss_bytes(), time.perf_counter()
    backend = build_backend("rm", settings.backbones["rm"], settings)
    result["load"] = {
        "seconds": time.perf_counter() - t0,
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_rss_bytes_before": rss0,
        "gpu_bytes": torch.cuda.memory_allocated() if a.device.startswith("cuda") else None,
        "revision": backend.revision,
        "attn_implementation": backend.attn_implementation,
    }
    backend.warmup()
    sharing_possible = backend.shares_prefix
    kinds = [f"grpo{g}" for g in a.groups.split(",")] + ["distinct"]
    cells: dict[str, dict[str, dict]] = {}
    for share in (True, False) if sharing_possible else (False,):
        backend.shares_prefix = share
        for kind in kinds:
            requests = make_requests(kind, 6, 0, prompt, response)
            before = splits.splits
            cell = asyncio.run(run_cell(backend, settings, requests, a.concurrency, a.seconds))
            cell["oom_splits"] = splits.splits - before
            cells.setdefault(kind, {})["share" if share else "noshare"] = cell
            print(f"bench.gpu: {kind} share={share}: {cell['items_per_s']:.1f} items/s", file=sys.stderr)
    result["cells"] = cells
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(table(result))
    return 0


def table(result: dict[str, Any]) -> str:
    """One row per (workload, contender): the service with sharing on and off, and the peer's rows
    where ``result["peer"]`` holds them."""
    gib = 1 << 30
    head = (
        f"{'workload':<10} {'contender':<10} {'items/s':>9} {'tokens/s':>10} {'p50 s':>7} {'p99 s':>7} {'peak GiB':>9}"
    )
    lines = [head, "-" * len(head)]
    for kind, by in result.get("cells", {}).items():
        for name, c in by.items():
            peak = c.get("peak_gpu_bytes")
            lines.append(
                f"{kind:<10} {name:<10} {c['items_per_s']:>9.2f} {c['tokens_per_s']:>10.0f} "
                f"{c['p50_s'] or 0:>7.2f} {c['p99_s'] or 0:>7.2f} {peak / gib if peak else float('nan'):>9.1f}"
            )
    peer = result.get("peer")
    if isinstance(peer, dict):
        lines.append(f"peer benchmark: {peer.get('summary') or json.dumps(peer)[:300]}")
    load = result.get("load", {})
    if load:
        lines.append(
            f"load: {load['seconds']:.1f} s, peak host RSS {load['peak_rss_bytes'] / gib:.2f} GiB"
            + (f", GPU {load['gpu_bytes'] / gib:.1f} GiB" if load.get("gpu_bytes") else "")
        )
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
