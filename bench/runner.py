"""The benchmark run: starts the contenders, runs the phases in order (limit, memory, the load cells
of every workload), computes the ratios, writes the JSON and prints the table; and the command line.

Every contender runs in its own process with the same environment (``REWARDSERVE_TORCH_THREADS``,
``TOKENIZERS_PARALLELISM=false``, one uvicorn worker, a throw-away reference store), on the same
model (the ``--config``, default: the embedded one) and the same generated workload; the load
comes from a separate ``python -m bench.load`` process per cell. See bench/README.md for the
modules: options, servers (launching), phases, ratios, report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from .options import BENCH_WORKLOADS, DEFAULT_OUT, DEFAULT_QUICK_OUT, MIXED_ONLY, PHASES, REPO, Options, log
from .phases import run_cells, run_limit, run_memory, runnable
from .ratios import compute_ratios
from .report import format_table, json_safe
from .servers import Server, contender_env, omp_wait_policy, plan_contenders, start_all
from .workload import WORKLOADS


def _model_description(config: str | None) -> str:
    from rewardserve.config import load_settings

    s = load_settings(config)
    return ", ".join(
        f"{n} ({b.kind}, {b.device}, {b.dtype}, models {'/'.join(b.models)})" for n, b in s.backbones.items()
    )


def run_benchmark(
    quick: bool = False,
    seconds: float | None = None,
    out: str | os.PathLike | None = None,
    config: str | None = None,
    skip: tuple[str, ...] | list[str] = (),
    **options,
) -> dict:
    """Run the benchmark, write the JSON to ``out`` and return it (also prints the table unless
    ``print_table=False``). ``options``: any field of ``Options`` (concurrency, sizes, pool, …)."""
    o = Options.make(
        quick=quick,
        seconds=seconds,
        config=str(Path(config).resolve()) if config else None,
        skip=tuple(skip),
        **options,
    )
    out_path = Path(out) if out else (DEFAULT_QUICK_OUT if o.quick else DEFAULT_OUT)
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="rewardserve-bench-"))
    res: dict = {
        "meta": {
            "quick": o.quick,
            "seconds": o.seconds,
            "warmup": o.warmup,
            "seed": o.seed,
            "pool": o.pool,
            "concurrency": list(o.concurrency),
            "sizes": list(o.sizes),
            "workloads": list(o.workloads),
            "workload_specs": {w: WORKLOADS[w].to_dict() for w in (*o.workloads, "short")},
            "rss_requests": list(o.rss_requests),
            "skip": list(o.skip),
            "config": o.config or "(embedded default)",
            "model": _model_description(o.config),
            "threads": {
                "REWARDSERVE_TORCH_THREADS": o.threads,
                "TOKENIZERS_PARALLELISM": "false",
                "uvicorn_workers": 1,
                "OMP_WAIT_POLICY": omp_wait_policy(o) or "(unset: OpenMP default)",
            },
            "machine": {
                "cpu_count": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "loadavg_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            },
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "out": str(out_path),
        }
    }
    log(f"planned: about {o.planned_seconds():.0f} s (skip: {', '.join(o.skip) or 'none'}); logs in {tmp}")
    servers: dict[str, Server] = {}
    try:
        servers = plan_contenders(o, tmp)
        if servers:
            start_all(servers)
            res["meta"]["startup_seconds"] = {n: s.startup_seconds[0] for n, s in servers.items()}
        import httpx

        if "naive" in servers:
            res["meta"]["threads"]["naive_server"] = httpx.get(f"{servers['naive'].url}/info", timeout=10).json()
        if "service" in servers:
            res["meta"]["threads"]["service"] = httpx.get(f"{servers['service'].url}/v1/models", timeout=10).json()[
                "runtime"
            ]

        base_env = contender_env(o, tmp, "limit")
        if "limit" not in o.skip:
            res["limit"] = run_limit(o, base_env)
            res["meta"]["threads"]["limit_process"] = res["limit"]["threads"]
        if "memory" not in o.skip:
            res["memory"] = run_memory(servers["service"], o, servers["service"].env)
        rates = {w: x["items_per_s"] for w, x in ((res.get("limit") or {}).get("workloads") or {}).items()}
        res["meta"]["max_round_seconds"] = o.max_round_seconds
        res["meta"]["skipped_cells"] = {w: runnable(o, rates.get(w))[1] for w in o.workloads}
        for w, sk in res["meta"]["skipped_cells"].items():
            if sk:
                log(
                    f"{w}: skipping cells whose round exceeds {o.max_round_seconds:g} s at the limit rate: "
                    + ", ".join(f"c={x['concurrency']} s={x['size']} ({x['round_seconds_at_limit']:.0f} s)" for x in sk)
                )
        contenders = {
            n: (servers[n], o.unsorted_min_in_flight if n in MIXED_ONLY else 0)
            for n in ("service", "naive", *MIXED_ONLY)
            if n in servers and n not in o.skip
        }
        for k, w in enumerate(o.workloads):
            here = {n: c for n, c in contenders.items() if n not in MIXED_ONLY or w == "mixed"}
            later = frozenset(
                n for w2 in o.workloads[k + 1 :] for n in contenders if n not in MIXED_ONLY or w2 == "mixed"
            )
            for n, cells in run_cells(here, w, o, base_env, rate=rates.get(w), used_later=later).items():
                res.setdefault(n, {})[w] = cells
        res["meta"]["restarts"] = {n: s.restarts for n, s in servers.items()}
    except BaseException:
        for s in servers.values():
            tail = s.log_tail()
            if tail.strip():
                log(f"{s.name} log tail:\n{tail}")
        raise
    finally:
        for s in servers.values():
            s.stop()
    res["ratios"], res["targets"] = compute_ratios(res)
    res["meta"]["machine"]["loadavg_end"] = (
        [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    )
    res["meta"]["wall_seconds"] = time.monotonic() - t_start
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(json_safe(res), indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(tmp, ignore_errors=True)
    if o.print_table:
        print(format_table(res), flush=True)
    return res


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Throughput/latency benchmark of rewardserve: in-process limit, the service, a naive "
        "per-request server and the service without length sorting, on one model and workload.",
    )
    p.add_argument(
        "--quick", action="store_true", help="CI-sized run: mixed workload, concurrency 1,4, sizes 1,8, 1.5 s cells"
    )
    p.add_argument("--seconds", type=float, default=None, help="measured seconds per cell (default 3; quick 1.5)")
    p.add_argument("--warmup", type=float, default=None, help="unmeasured seconds per cell (default 1; quick 0.5)")
    p.add_argument(
        "--out",
        default=None,
        help=f"JSON output (default {DEFAULT_OUT.relative_to(REPO)}; --quick: {DEFAULT_QUICK_OUT.relative_to(REPO)})",
    )
    p.add_argument("--config", default=None, help="rewardserve config YAML (default: the embedded one)")
    p.add_argument(
        "--skip", default="", help=f"comma-separated phases or workloads to skip: {', '.join(PHASES + BENCH_WORKLOADS)}"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads of every contender (default: CPU count)")
    p.add_argument(
        "--omp-wait-policy",
        default=None,
        choices=("passive", "active", "inherit"),
        help="OMP_WAIT_POLICY of every contender (default passive; inherit: leave the environment's)",
    )
    p.add_argument("--concurrency", type=_ints, default=None, help="client counts (default 1,4,16,64)")
    p.add_argument("--sizes", type=_ints, default=None, help="items per request (default 1,8,64)")
    p.add_argument("--pool", type=int, default=None, help="distinct items per workload (default 1024; quick 256)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--budgets", type=_ints, default=None, help="limit sweep token budgets (default by device)")
    p.add_argument(
        "--limit-seconds",
        type=float,
        default=None,
        help="limit phase: seconds per token budget (default 1.5; quick 0.6)",
    )
    p.add_argument("--rss-requests", type=_ints, default=None, help="memory phase checkpoints (default 2000,20000)")
    a = p.parse_args(argv)
    if a.rss_requests is not None and (len(a.rss_requests) != 2 or not 0 < a.rss_requests[0] < a.rss_requests[1]):
        p.error("--rss-requests takes two increasing counts, e.g. 2000,20000")
    skip = tuple(x.strip() for x in a.skip.split(",") if x.strip())
    kw = dict(
        warmup=a.warmup,
        threads=a.threads,
        omp_wait_policy=a.omp_wait_policy,
        concurrency=a.concurrency,
        sizes=a.sizes,
        pool=a.pool,
        seed=a.seed,
        budgets=a.budgets,
        rss_requests=a.rss_requests,
        limit_seconds=a.limit_seconds,
    )
    try:
        Options.make(quick=a.quick, seconds=a.seconds, skip=skip, **kw)  # validate before starting anything
    except ValueError as e:
        p.error(str(e))
    if a.config and not Path(a.config).exists():
        p.error(f"--config {a.config}: no such file")
    run_benchmark(quick=a.quick, seconds=a.seconds, out=a.out, config=a.config, skip=skip, **kw)
    return 0
