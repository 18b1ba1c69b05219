"""The measuring phases: the in-process limit, the closed-loop load cells against the contenders,
and the memory phase. Each measurement runs in a process of its own (``python -m bench.limit``,
``python -m bench.load``) and answers one JSON object."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from .options import REPO, Options, log
from .report import fmt
from .servers import Server


def run_json(cmd: list[str], env: dict[str, str], timeout: float, what: str) -> dict:
    p = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if p.returncode != 0:
        raise RuntimeError(f"{what} failed with exit code {p.returncode}:\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def load_cmd(
    url: str, workload: str, o: Options, concurrency: int, size: int, requests: int | None = None
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "bench.load",
        "--url",
        url,
        "--workload",
        workload,
        "--seed",
        str(o.seed),
        "--pool",
        str(o.pool),
        "--concurrency",
        str(concurrency),
        "--size",
        str(size),
    ]
    if requests is None:
        cmd += ["--seconds", str(o.seconds), "--warmup", str(o.warmup), "--max-seconds", str(o.max_cell_seconds)]
    else:
        cmd += ["--requests", str(requests)]
    return cmd


def run_limit(o: Options, env: dict[str, str]) -> dict:
    """The limit phase in a process of its own (``bench/limit.py``): the model's encode + forward on
    ideal batches, per workload."""
    log("limit: in-process forward, ideal batches")
    cmd = [
        sys.executable,
        "-m",
        "bench.limit",
        "--workloads",
        ",".join(o.workloads),
        "--pool",
        str(o.pool),
        "--seed",
        str(o.seed),
        "--seconds-per-budget",
        str(o.limit_seconds),
        "--latency-seconds",
        str(o.latency_seconds),
    ]
    if o.config:
        cmd += ["--config", o.config]
    if o.budgets:
        cmd += ["--budgets", ",".join(map(str, o.budgets))]
    elif o.quick:
        cmd += ["--budgets", "quick"]
    res = run_json(cmd, env, 900, "limit phase")
    for w, x in res["workloads"].items():
        log(
            f"limit {w}: {x['items_per_s']:.1f} items/s ({x['forward_items_per_s']:.1f} forward only, "
            f"budget {x['best_budget']}, {x['best_layout']['workers']} worker(s) × "
            f"{x['best_layout']['threads_per_worker']} thread(s)), single item p50 {x['single_item_ms']['p50']:.2f} ms"
        )
    return res


def runnable(o: Options, rate: float | None, min_in_flight: int = 0) -> tuple[list[tuple[int, int]], list[dict]]:
    """(size, concurrency) cells to run, light to heavy, and the cells skipped with the reason: a round
    of concurrency × size items that takes longer than ``max_round_seconds`` at the limit ``rate``."""
    run, skipped = [], []
    for s in o.sizes:
        for c in o.concurrency:
            if s * c < min_in_flight:
                continue
            if rate and s * c / rate > o.max_round_seconds:
                skipped.append({"concurrency": c, "size": s, "round_seconds_at_limit": s * c / rate})
            else:
                run.append((s, c))
    return run, skipped


def run_cells(
    contenders: dict[str, tuple[Server, int]],
    workload: str,
    o: Options,
    env: dict[str, str],
    rate: float | None = None,
    used_later: frozenset[str] = frozenset(),
) -> dict[str, list[dict]]:
    """The runnable cells, light to heavy; each cell runs against every contender (``name: (server,
    min_in_flight)``) back to back, in an order that alternates from cell to cell, so that a machine
    whose speed drifts (a shared VM) shifts every contender of a cell alike. After each cell wait for
    the server to finish what earlier clients left (restart it if that takes over ``drain_timeout``);
    not after a server's last cell (``used_later``: servers measured again in a later workload)."""
    cells, _ = runnable(o, rate)
    plan = []
    for k, (size, conc) in enumerate(cells):
        names = [n for n, (_, mif) in contenders.items() if size * conc >= mif]
        plan += [(size, conc, n) for n in (names if k % 2 == 0 else names[::-1])]
    out: dict[str, list[dict]] = {n: [] for n in contenders}
    for i, (size, conc, name) in enumerate(plan):
        server = contenders[name][0]
        res = run_json(
            load_cmd(server.url, workload, o, conc, size),
            env,
            o.seconds + o.warmup + 120,
            f"load {server.name} {workload} c={conc} s={size}",
        )
        res["server"] = server.name
        if res["requests"] == 0 and res["other_errors"]:
            raise RuntimeError(
                f"{server.name} c={conc} s={size}: every request failed ({res['status']}, "
                f"{res['other_errors']} errors); server log:\n{server.log_tail()}"
            )
        final = name not in used_later and all(n != name for _, _, n in plan[i + 1 :])
        res["drained"] = None
        if not final:
            t0 = time.monotonic()
            idle = server.wait_idle(o.drain_timeout)
            res["drain_seconds"] = time.monotonic() - t0
            res["drained"] = idle
            if not idle:
                log(f"{server.name}: still busy {o.drain_timeout:.0f} s after c={conc} s={size}; restarting it")
                server.restart()
        lat = res["latency_ms"]
        log(
            f"{server.name:8s} {workload:7s} c={conc:<3d} s={size:<3d} {res['items_per_s']:9.1f} items/s  "
            f"p50 {fmt(lat['p50'])} ms  p99 {fmt(lat['p99'])} ms  503s {res['rejected_503']}"
        )
        out[name].append(res)
    return out


def run_memory(server: Server, o: Options, env: dict[str, str]) -> dict:
    """RSS of a fresh service after n1 and after n2 single-item requests (short items, so the phase
    measures per-request memory, not compute)."""
    log(f"memory: {o.rss_requests[1]} single-item requests to a fresh service")
    n1, n2 = o.rss_requests
    rss0 = server.rss_mb()
    t0 = time.monotonic()
    r1 = run_json(load_cmd(server.url, "short", o, o.rss_concurrency, 1, n1), env, 900, "memory phase (1)")
    rss1 = server.rss_mb()
    r2 = run_json(load_cmd(server.url, "short", o, o.rss_concurrency, 1, n2 - n1), env, 900, "memory phase (2)")
    rss2 = server.rss_mb()
    ratio = rss2 / rss1 if rss1 and rss2 else None
    return {
        "workload": "short",
        "concurrency": o.rss_concurrency,
        "items_per_request": 1,
        "requests": [n1, n2],
        "rss_mb_start": rss0,
        "rss_mb_after": {str(n1): rss1, str(n2): rss2},
        "ratio": ratio,
        "ok_requests": r1["requests"] + r2["requests"],
        "errors": r1["other_errors"] + r2["other_errors"] + r1["rejected_503"] + r2["rejected_503"],
        "seconds": time.monotonic() - t0,
    }
