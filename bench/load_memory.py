"""Host memory of loading a reward model: ``python -m bench.load_memory [--shape 1b] [--dtype bfloat16]``.

Builds a Llama sequence classifier of the given shape with random weights (saved once under
``--work``), then, in a fresh process, loads it the way the service does
(``rewardserve.backends.base.load_to_device`` on the CPU) and reports the process's RSS before the
load and its peak (``VmHWM`` after a reset) during the load and after one read of every weight (as
a forward would; weights mapped from the files only become resident when read), against the size
of the safetensors files. The service
loads straight to the device without staging every weight in host memory, so the peak should stay
≤ 1.3 × the weights (the rest is Python, torch and transformers, measured before the load). A second
load in the same process reports the revision digest's time with a warm digest cache.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SHAPES: dict[str, dict[str, Any]] = {
    # Llama-3.2-1B's shape: 1.24 B parameters (2.5 GB in bfloat16)
    "1b": dict(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
    ),
    # ~50 M parameters: the test's
    "small": dict(
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
    ),
}


def build(out: Path, shape: str, dtype: str, seed: int = 0) -> Path:
    """A random Llama classifier of ``shape`` saved in ``dtype`` to ``out`` (kept if it exists)."""
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from rewardlab.tiny_models import word_tokenizer
    from rewardserve.backends.base import DTYPES

    tok = word_tokenizer(chat_template=True)
    cfg = LlamaConfig(num_labels=1, pad_token_id=tok.pad_token_id, max_position_embeddings=4096, **SHAPES[shape])
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(DTYPES[dtype])
    try:
        model = LlamaForSequenceClassification(cfg)
    finally:
        torch.set_default_dtype(previous)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def _status(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS: now; VmHWM: the peak since the last reset), bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> None:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0: clear_refs 5), so
    the peak that follows is the load's, not the imports'."""
    Path("/proc/self/clear_refs").write_text("5")


def measure(path: str, dtype: str, digest_cache: str | None = None) -> dict[str, Any]:
    """Run in a fresh process: peak RSS before and after loading ``path`` on the CPU as the service does."""
    import os

    import torch

    if digest_cache:
        os.environ["REWARDSERVE_DIGEST_CACHE"] = digest_cache
    # imported before the baseline: their import is not the load's
    import transformers.models.llama.modeling_llama  # noqa: F401

    from rewardserve.backends.base import DTYPES, load_to_device, weights_digest

    weights = sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
    _reset_peak()
    before = _status("VmRSS")
    t0 = time.perf_counter()
    model = load_to_device(path, torch.device("cpu"), DTYPES[dtype])
    load_s = time.perf_counter() - t0
    at_load = _status("VmHWM")
    with torch.no_grad():  # every weight read once (a forward would): mmap-backed pages become resident
        for p in model.parameters():
            p.sum()
    after = _status("VmHWM")
    t0 = time.perf_counter()
    digest = weights_digest(path)
    first_digest_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = weights_digest(path)
    cached_digest_s = time.perf_counter() - t0
    assert digest == again
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "params": n_params,
        "weights_bytes": weights,
        "rss_before_load": before,
        "peak_rss_at_load": at_load,
        "peak_rss": after,
        "load_seconds": load_s,
        "peak_over_weights": after / weights,
        "increase_over_weights": (after - before) / weights,
        "digest": digest,
        "digest_seconds_first": first_digest_s,
        "digest_seconds_cached": cached_digest_s,
    }


def measure_in_subprocess(path: str | Path, dtype: str, digest_cache: str | None = None) -> dict[str, Any]:
    code = (
        "import json, sys; from bench.load_memory import measure; "
        "print(json.dumps(measure(sys.argv[1], sys.argv[2], sys.argv[3] or None)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), dtype, digest_cache or ""],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.load_memory", description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--work", default=str(Path("~/.cache/rewardserve/bench").expanduser()))
    a = ap.parse_args(argv)
    path = build(Path(a.work) / f"llama-{a.shape}-{a.dtype}-rm", a.shape, a.dtype)
    r = measure_in_subprocess(path, a.dtype, str(Path(a.work) / "digests.json"))
    gib = 1 << 30
    print(json.dumps(r, indent=2))
    print(
        f"{r['params'] / 1e9:.2f} B parameters, weights {r['weights_bytes'] / gib:.2f} GiB; RSS before the load "
        f"{r['rss_before_load'] / gib:.2f} GiB, peak {r['peak_rss'] / gib:.2f} GiB = {r['peak_over_weights']:.2f}× "
        f"the weights (increase {r['increase_over_weights']:.2f}×); load {r['load_seconds']:.1f} s; digest "
        f"{r['digest_seconds_first']:.2f} s first, {r['digest_seconds_cached'] * 1000:.1f} ms cached",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
