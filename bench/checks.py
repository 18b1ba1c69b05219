"""python -m bench checks: math checks through ``VerifierEngine`` against the same checks in a bare
pebble pool (the limit), on generated arithmetic items with known answers.

Each round runs, in this one process and in turn (so a shared machine's noise hits all alike):

- **bare**: ``pebble.ProcessPool(workers).map(math_check, …, chunksize)``: the checks and nothing
  else (no per-item timer, no isolation of a hung item: it cannot take pathological items);
- **engine**: ``VerifierEngine`` with ``--timeout`` per item, fed ``--concurrency`` requests of
  ``--batch`` items at a time (as the service will);
- **engine+patho**: the same with ``--patho`` (default 1 %) of the items replaced by answers that
  sympy would evaluate for ever (``\\boxed{9^{9^{9^{9}}}}`` and kin, ``PATHOLOGICAL``): the math
  check refuses them by size in milliseconds (warning "answer too large to evaluate"); one it did not
  know would be killed at ``timeout + grace`` (counted as ``timeout``);
- **service** / **service+patho**: the same items through a live ``rewardserve serve`` (a separate
  process, started once before the rounds) with one ``kind: verifier`` backbone of the same workers and
  timeout, sent by the SDK's ``AsyncRewardClient``, ``--concurrency`` requests of ``--batch`` items in
  flight: HTTP, validation, the pipeline and the registry's verifier backbone included (``--no-service``
  skips it).

Reported: items/s of each (median over ``--rounds``, with min–max), engine / bare and service / bare
(target ≥ 0.8), engine+patho / engine and service+patho / service (target ≥ 0.7).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PATHOLOGICAL = [
    r"\boxed{9^{9^{9^{9}}}}",
    r"\boxed{10^{10^{10^{10}}}}",
    r"\boxed{7^{7^{7^{7^{7}}}}}",
    r"\boxed{(10^{10})!}",
    r"\boxed{\frac{1}{2^{10^{10}}}}",
]
"""Answers sympy would evaluate for ever (the math check refuses them by size; without that, each
would be killed at timeout + grace)."""


def _kind(warning: str) -> str:
    return "timeout" if "timed out" in warning else "refused" if "too large to evaluate" in warning else "failed"


def arithmetic_items(n: int, seed: int = 0, patho: float = 0.0) -> list[tuple[str, str]]:
    """(response, reference) pairs: a + b·c or a/b problems answered right (as an integer, a LaTeX
    fraction or a decimal, boxed or not) or wrong, in a few sentences of reasoning."""
    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    for _ in range(n):
        if patho and rng.random() < patho:
            out.append((f"Let me compute. The answer is {rng.choice(PATHOLOGICAL)}.", str(rng.randint(1, 99))))
            continue
        if rng.random() < 0.5:
            a, b, c = rng.randint(1, 99), rng.randint(1, 20), rng.randint(1, 20)
            ref = str(a + b * c)
            value = a + b * c if rng.random() < 0.7 else a + b * c + rng.randint(1, 5)
            answer = rng.choice([f"\\boxed{{{value}}}", f"${value}$", str(value)])
            text = f"First {b} times {c} is {b * c}. Adding {a} gives {value}. The answer is {answer}."
        else:
            p, q = rng.randint(1, 30), rng.randint(2, 16)
            ref = f"\\frac{{{p}}}{{{q}}}"
            num = p if rng.random() < 0.7 else p + 1
            answer = rng.choice([f"\\boxed{{\\frac{{{num}}}{{{q}}}}}", f"${num}/{q}$", f"\\boxed{{{num / q:.6g}}}"])
            text = f"We divide {p} by {q}. So the result is {answer}."
        out.append((text, ref))
    return out


def _check(pair: tuple[str, str]) -> float:
    from rewardserve.verifiers.checks import math_check

    return math_check(*pair)


def _warm() -> None:
    import math_verify  # noqa: F401


def run_bare(pairs: list[tuple[str, str]], workers: int, chunksize: int) -> float:
    """Items/s of math_check over ``pairs`` in a bare pebble pool (started and warmed outside the timing)."""
    import multiprocessing

    from pebble import ProcessPool

    ctx = multiprocessing.get_context("forkserver")
    with ProcessPool(max_workers=workers, initializer=_warm, context=ctx) as pool:
        list(pool.map(_check, pairs[: workers * 4], chunksize=1).result())  # warm every worker
        t0 = time.perf_counter()
        scores = list(pool.map(_check, pairs, chunksize=chunksize).result())
        dt = time.perf_counter() - t0
    assert len(scores) == len(pairs)
    return len(pairs) / dt


def run_engine(
    pairs: list[tuple[str, str]],
    workers: int,
    timeout_s: float,
    batch: int,
    concurrency: int,
    chunk_size: int | None = None,
) -> tuple[float, dict[str, int]]:
    """Items/s through VerifierEngine, ``concurrency`` requests of ``batch`` items in flight; and
    counts of warnings by kind."""
    from rewardserve.verifiers import CheckConfig, CheckItem, VerifierEngine

    engine = VerifierEngine(
        {"correct": CheckConfig(verifier="math")}, workers=workers, timeout_s=timeout_s, chunk_size=chunk_size
    )
    engine.start()
    requests = [[CheckItem(r, ref) for r, ref in pairs[k : k + batch]] for k in range(0, len(pairs), batch)]
    counts = {"timeout": 0, "refused": 0, "failed": 0}

    async def main() -> float:
        await engine.score([CheckItem(r, ref) for r, ref in pairs[: workers * 4]])  # warm
        queue = list(reversed(requests))

        async def client() -> None:
            while queue:
                out = await engine.score(queue.pop())
                for res in out["correct"]:
                    if res.warning:
                        counts[_kind(res.warning)] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return time.perf_counter() - t0

    try:
        dt = asyncio.run(main())
    finally:
        engine.stop()
    return len(pairs) / dt, counts


def service_config(path: Path, workers: int, timeout_s: float) -> Path:
    """A config with one verifier backbone (the math check as model ``correct``)."""
    import yaml

    cfg = {
        "batching": {"max_wait_ms": 0},
        "references": {"store": f"sqlite:///{path.parent / 'refs.db'}"},
        "limits": {"max_items_per_request": 4096},
        "backbones": {
            "checks": {
                "kind": "verifier",
                "workers": workers,
                "timeout_s": timeout_s,
                "models": {"correct": {"verifier": "math"}},
            }
        },
    }
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def run_service(url: str, pairs: list[tuple[str, str]], batch: int, concurrency: int) -> tuple[float, dict[str, int]]:
    """Items/s through the live service at ``url`` (the SDK, ``concurrency`` requests of ``batch``
    items in flight); and counts of warnings by kind."""
    from rewardclient import AsyncRewardClient

    items = [{"prompt": "Compute.", "response": r, "label": ref} for r, ref in pairs]
    requests = [items[k : k + batch] for k in range(0, len(items), batch)]
    counts = {"timeout": 0, "refused": 0, "failed": 0}

    async def main() -> float:
        async with AsyncRewardClient(url, read_timeout=600) as rc:
            await rc.score(items[:8], models=["correct"])  # warm the connection
            queue = list(reversed(requests))

            async def client() -> None:
                while queue:
                    for res in await rc.score(queue.pop(), models=["correct"]):
                        for w in res.warnings:
                            counts[_kind(w)] += 1

            t0 = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            return time.perf_counter() - t0

    return len(pairs) / asyncio.run(main()), counts


def _summary(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench checks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=2000, help="items per measurement")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=1.0, help="engine timeout_s per item")
    ap.add_argument("--batch", type=int, default=64, help="items per engine request")
    ap.add_argument("--concurrency", type=int, default=4, help="engine requests in flight")
    ap.add_argument("--chunksize", type=int, default=16, help="the bare pool's chunksize")
    ap.add_argument("--chunk", type=int, default=None, help="the engine's chunk_size (default: its own choice)")
    ap.add_argument("--patho", type=float, default=0.01, help="share of pathological items")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/checks.json")
    ap.add_argument("--no-service", dest="service", action="store_false", help="skip the service cells")
    args = ap.parse_args(argv)

    clean = arithmetic_items(args.items, args.seed)
    mixed = arithmetic_items(args.items, args.seed + 1, patho=args.patho)
    n_patho = sum(1 for r, _ in mixed if any(p in r for p in PATHOLOGICAL))
    rows: dict[str, list[float]] = {"bare": [], "engine": [], "engine+patho": []}
    if args.service:
        rows |= {"service": [], "service+patho": []}
    warnings: list[dict[str, int]] = []
    with contextlib.ExitStack() as stack:
        url = None
        if args.service:
            from rewardserve.service_process import ServiceProcess

            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            cfg = service_config(tmp / "checks.yaml", args.workers, args.timeout)
            url = stack.enter_context(ServiceProcess(config=str(cfg))).url
        for k in range(args.rounds):
            rows["bare"].append(run_bare(clean, args.workers, args.chunksize))
            rows["engine"].append(
                run_engine(clean, args.workers, args.timeout, args.batch, args.concurrency, args.chunk)[0]
            )
            rate, counts = run_engine(mixed, args.workers, args.timeout, args.batch, args.concurrency, args.chunk)
            rows["engine+patho"].append(rate)
            warnings.append(counts)
            if url is not None:
                rows["service"].append(run_service(url, clean, args.batch, args.concurrency)[0])
                rate, counts = run_service(url, mixed, args.batch, args.concurrency)
                rows["service+patho"].append(rate)
                warnings.append({f"service_{k}": v for k, v in counts.items()})
            line = ", ".join(f"{n} {v[-1]:.0f}/s" for n, v in rows.items())
            print(f"round {k + 1}: {line} {warnings[-2:] if url else counts}", flush=True)
    ratio_clean = [e / b for e, b in zip(rows["engine"], rows["bare"])]
    ratio_patho = [p / e for p, e in zip(rows["engine+patho"], rows["engine"])]
    ratios = [("engine/bare", ratio_clean, 0.8), ("patho/clean", ratio_patho, 0.7)]
    result: dict[str, Any] = {
        "settings": vars(args) | {"pathological_items": n_patho},
        "items_per_s": {n: _summary(v) for n, v in rows.items()},
        "engine_over_bare": _summary(ratio_clean) | {"target": 0.8},
        "patho_over_clean": _summary(ratio_patho) | {"target": 0.7},
        "warnings_per_round": warnings,
        "raw": rows,
    }
    if args.service:
        svc_clean = [s / b for s, b in zip(rows["service"], rows["bare"])]
        svc_patho = [p / s for p, s in zip(rows["service+patho"], rows["service"])]
        result["service_over_bare"] = _summary(svc_clean) | {"target": 0.8}
        result["service_patho_over_clean"] = _summary(svc_patho) | {"target": 0.7}
        ratios += [("service/bare", svc_clean, 0.8), ("svc patho/clean", svc_patho, 0.7)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"{'contender':<14} {'items/s (median, min-max)':>28}")
    for n, v in rows.items():
        s = _summary(v)
        print(f"{n:<14} {s['median']:>12.0f} ({s['min']:.0f}-{s['max']:.0f})")
    for name, rs, target in ratios:
        s = _summary(rs)
        verdict = "pass" if s["median"] >= target else "FAIL"
        print(f"{name:<16} {s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})  target >= {target}  {verdict}")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
