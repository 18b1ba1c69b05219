"""The benchmark run: limit, service, naive baseline, unsorted and FIFO services, memory; JSON + table.

Every contender runs in its own process with the same environment (``REWARDSERVE_TORCH_THREADS``,
``TOKENIZERS_PARALLELISM=false``, one uvicorn worker, a throw-away reference store), on the same
model (the ``--config``, default: the embedded one) and the same generated workload; the load
comes from a separate ``python -m bench.load`` process per cell. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .limit import layouts
from .workload import WORKLOADS

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results" / "latest.json"
DEFAULT_QUICK_OUT = REPO / "bench" / "results" / "quick.json"
PHASES = ("limit", "service", "naive", "unsorted", "fifo", "memory")
MIXED_ONLY = ("unsorted", "fifo")  # contenders that run only the mixed workload's batching cells
BENCH_WORKLOADS = ("mixed", "uniform")

# targets (printed next to each ratio)
TARGET_SERVICE_OVER_LIMIT = 0.90
TARGET_SERVICE_OVER_NAIVE = 1.0
TARGET_SORTED_OVER_UNSORTED = 1.3
TARGET_ADDED_LATENCY_MS = 5.0
TARGET_RSS_GROWTH = 0.10


@dataclass
class Options:
    quick: bool = False
    seconds: float = 3.0  # measured seconds per cell
    warmup: float = 1.0  # unmeasured seconds per cell
    out: str | None = None
    config: str | None = None
    skip: tuple[str, ...] = ()
    seed: int = 0
    pool: int = 1024
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    # OpenMP wait policy of every contender: "passive" | "active" | "inherit" (leave the environment's)
    omp_wait_policy: str = "passive"
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    sizes: tuple[int, ...] = (1, 8, 64)
    workloads: tuple[str, ...] = BENCH_WORKLOADS
    budgets: tuple[int, ...] | None = None  # limit sweep; None: by device
    limit_seconds: float = 1.5  # per budget
    latency_seconds: float = 2.0  # bare single-item encode+forward timing
    rss_requests: tuple[int, int] = (2_000, 20_000)
    rss_concurrency: int = 64
    drain_timeout: float = 5.0  # after a cell: wait this long for the server to go idle, else restart it
    max_cell_seconds: float = 12.0  # hard limit of one cell, warm-up and in-flight requests included
    # a cell runs only when one round of its requests (concurrency × size items) takes at most this
    # long at the measured limit rate: a longer round cannot be measured in a cell (see README)
    max_round_seconds: float = 4.0
    unsorted_min_in_flight: int = 32  # unsorted runs only cells with concurrency × size ≥ this (batches form)
    print_table: bool = True

    @classmethod
    def make(cls, quick: bool = False, **kw) -> Options:
        base: dict = {}
        if quick:
            base = dict(seconds=1.5, warmup=0.5, pool=256, concurrency=(1, 4), sizes=(1, 8), workloads=("mixed",),
                        limit_seconds=0.6, latency_seconds=1.0, rss_requests=(200, 2_000), drain_timeout=3.0,
                        max_cell_seconds=8.0, rss_concurrency=64)
        base.update({k: v for k, v in kw.items() if v is not None})
        o = cls(quick=quick, **base)
        if o.omp_wait_policy not in ("passive", "active", "inherit"):
            raise ValueError(f"--omp-wait-policy must be passive, active or inherit, got {o.omp_wait_policy!r}")
        unknown = set(o.skip) - set(PHASES) - set(BENCH_WORKLOADS)
        if unknown:
            raise ValueError(f"--skip: unknown {sorted(unknown)}; choose from {', '.join(PHASES + BENCH_WORKLOADS)}")
        o.workloads = tuple(w for w in o.workloads if w not in o.skip)
        if not o.workloads:
            raise ValueError("every workload is skipped")
        return o

    def planned_seconds(self) -> float:
        """A rough upper estimate of the run's wall time (for the budget line printed at start)."""
        cells_per_server = len(self.concurrency) * len(self.sizes)
        n = 0
        for w in self.workloads:
            n += cells_per_server * (("service" not in self.skip) + ("naive" not in self.skip))
            if w == "mixed":
                n += sum(1 for s in self.sizes for c in self.concurrency if s * c >= self.unsorted_min_in_flight) * sum(
                    p not in self.skip for p in MIXED_ONLY)
        per_cell = self.seconds + self.warmup + 0.8  # + process start and idle check
        n_budgets = len(self.budgets) if self.budgets else (2 if self.quick else 6)
        n_layouts = len(layouts(False, self.threads or os.cpu_count() or 1))  # a CPU upper estimate
        limit = 0 if "limit" in self.skip else 8 + len(self.workloads) * (
            (n_layouts * n_budgets + 2) * self.limit_seconds * 1.3 + self.latency_seconds + 2)
        memory = 0 if "memory" in self.skip else self.rss_requests[1] / 250
        return 20 + n * per_cell + limit + memory


def _omp_wait_policy(o: Options) -> str | None:
    return os.environ.get("OMP_WAIT_POLICY") if o.omp_wait_policy == "inherit" else o.omp_wait_policy.upper()


def _env(o: Options, tmp: Path, name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    pp = os.environ.get("PYTHONPATH")
    policy = _omp_wait_policy(o)
    return {
        **({"OMP_WAIT_POLICY": policy} if policy else {}),
        "REWARDSERVE_TORCH_THREADS": str(o.threads),
        "TOKENIZERS_PARALLELISM": "false",
        "REWARDSERVE_REFERENCES__STORE": f"sqlite:///{tmp / f'refs-{name}.db'}",
        "PYTHONPATH": str(REPO) + (os.pathsep + pp if pp else ""),
        **(extra or {}),
    }


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- servers ------------------------------------------------------------------------------------
class Server:
    """A server child process (rewardserve's ``ServiceProcess``, or the naive baseline through the
    same launcher) whose stderr is drained into a log file so a long run never blocks on a full pipe."""

    def __init__(self, name: str, kind: str, config: str | None, env: dict[str, str], log_dir: Path):
        from rewardserve.service_process import ServiceProcess

        self.name, self.kind = name, kind
        self.sp = ServiceProcess(config=config, env=env)
        if kind == "naive":
            self.sp.cmd = [sys.executable, "-m", "bench.naive_server", "--host", "127.0.0.1", "--port", str(self.sp.port),
                           *(["--config", config] if config else [])]
        self.log_path = log_dir / f"{name}.log"
        self.restarts = 0
        self.startup_seconds: list[float] = []

    @property
    def url(self) -> str:
        return self.sp.url

    @property
    def pid(self) -> int | None:
        return self.sp.proc.pid if self.sp.proc else None

    def start(self) -> Server:
        self.sp.start()
        self.startup_seconds.append(self.sp.startup_seconds)
        err = self.sp.proc.stderr if self.sp.proc else None
        if err is not None:
            log = open(self.log_path, "ab")
            threading.Thread(target=_drain, args=(err, log), daemon=True).start()
        return self

    def stop(self) -> None:
        self.sp.stop()

    def restart(self) -> None:
        self.stop()
        self.restarts += 1
        self.start()

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def rss_mb(self) -> float | None:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            return None
        return None

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing is left running for earlier clients (False: still busy at ``timeout``)."""
        import httpx

        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=max(timeout, 1.0)) as c:
            while time.monotonic() < deadline:
                try:
                    if self.kind == "naive":
                        if c.get("/busy").json()["in_progress"] == 0:
                            return True
                    else:
                        queued = sum(float(line.rsplit(" ", 1)[1]) for line in c.get("/metrics").text.splitlines()
                                     if line.startswith("rewardserve_queue_items"))
                        if queued == 0:
                            # a probe queues behind the forward still running, if any
                            c.post("/v1/score", json={"items": [{"prompt": "hi", "response": "hello"}]},
                                   timeout=max(0.1, deadline - time.monotonic()))
                            return True
                except Exception:
                    pass
                time.sleep(0.05)
        return False


def _drain(src, dst) -> None:
    try:
        shutil.copyfileobj(src, dst)
    except (OSError, ValueError):
        pass
    finally:
        dst.close()


# -- phases -------------------------------------------------------------------------------------
def _run_json(cmd: list[str], env: dict[str, str], timeout: float, what: str) -> dict:
    p = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if p.returncode != 0:
        raise RuntimeError(f"{what} failed with exit code {p.returncode}:\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _load_cmd(url: str, workload: str, o: Options, concurrency: int, size: int, requests: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "bench.load", "--url", url, "--workload", workload, "--seed", str(o.seed),
           "--pool", str(o.pool), "--concurrency", str(concurrency), "--size", str(size)]
    if requests is None:
        cmd += ["--seconds", str(o.seconds), "--warmup", str(o.warmup), "--max-seconds", str(o.max_cell_seconds)]
    else:
        cmd += ["--requests", str(requests)]
    return cmd


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


def run_cells(contenders: dict[str, tuple[Server, int]], workload: str, o: Options, env: dict[str, str],
              rate: float | None = None, used_later: frozenset[str] = frozenset()) -> dict[str, list[dict]]:
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
        res = _run_json(_load_cmd(server.url, workload, o, conc, size), env, o.seconds + o.warmup + 120,
                        f"load {server.name} {workload} c={conc} s={size}")
        res["server"] = server.name
        if res["requests"] == 0 and res["other_errors"]:
            raise RuntimeError(f"{server.name} c={conc} s={size}: every request failed ({res['status']}, "
                               f"{res['other_errors']} errors); server log:\n{server.log_tail()}")
        final = name not in used_later and all(n != name for _, _, n in plan[i + 1:])
        res["drained"] = None
        if not final:
            t0 = time.monotonic()
            idle = server.wait_idle(o.drain_timeout)
            res["drain_seconds"] = time.monotonic() - t0
            res["drained"] = idle
            if not idle:
                _log(f"{server.name}: still busy {o.drain_timeout:.0f} s after c={conc} s={size}; restarting it")
                server.restart()
        lat = res["latency_ms"]
        _log(f"{server.name:8s} {workload:7s} c={conc:<3d} s={size:<3d} {res['items_per_s']:9.1f} items/s  "
             f"p50 {_f(lat['p50'])} ms  p99 {_f(lat['p99'])} ms  503s {res['rejected_503']}")
        out[name].append(res)
    return out


def run_memory(server: Server, o: Options, env: dict[str, str]) -> dict:
    """RSS of a fresh service after n1 and after n2 single-item requests (short items, so the phase
    measures per-request memory, not compute)."""
    n1, n2 = o.rss_requests
    rss0 = server.rss_mb()
    t0 = time.monotonic()
    r1 = _run_json(_load_cmd(server.url, "short", o, o.rss_concurrency, 1, n1), env, 900, "memory phase (1)")
    rss1 = server.rss_mb()
    r2 = _run_json(_load_cmd(server.url, "short", o, o.rss_concurrency, 1, n2 - n1), env, 900, "memory phase (2)")
    rss2 = server.rss_mb()
    ratio = rss2 / rss1 if rss1 and rss2 else None
    return {
        "workload": "short", "concurrency": o.rss_concurrency, "items_per_request": 1,
        "requests": [n1, n2], "rss_mb_start": rss0, "rss_mb_after": {str(n1): rss1, str(n2): rss2},
        "ratio": ratio, "ok_requests": r1["requests"] + r2["requests"],
        "errors": r1["other_errors"] + r2["other_errors"] + r1["rejected_503"] + r2["rejected_503"],
        "seconds": time.monotonic() - t0,
    }


# -- ratios and targets -------------------------------------------------------------------------
def _best(cells: list[dict]) -> dict | None:
    return max(cells, key=lambda c: c["items_per_s"]) if cells else None


def _div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    if b == 0:
        return math.inf if a > 0 else None
    return a / b


def compute_ratios(res: dict) -> tuple[dict, list[dict]]:
    ratios: dict = {"service_over_limit": {}, "service_over_naive": {}, "sorted_over_unsorted": None,
                    "added_latency_ms": None, "rss_ratio": None}
    targets: list[dict] = []

    def target(name: str, value, op: str, goal: float, note: str = "") -> None:
        ok = None if value is None else (value >= goal if op == ">=" else value <= goal)
        targets.append({"check": name, "value": value, "target": f"{op} {goal:g}", "pass": ok, "note": note})

    limit = res.get("limit") or {}
    service = res.get("service") or {}
    naive = res.get("naive") or {}
    for w in res["meta"]["workloads"]:
        best = _best(service.get(w, []))
        lim = (limit.get("workloads") or {}).get(w)
        r = _div(best["items_per_s"] if best else None, lim["items_per_s"] if lim else None)
        ratios["service_over_limit"][w] = {
            "ratio": r,
            "ratio_forward_only": _div(best["items_per_s"] if best else None, lim["forward_items_per_s"] if lim else None),
            "service_best_items_per_s": best["items_per_s"] if best else None,
            "service_best_cell": {"concurrency": best["concurrency"], "size": best["size"]} if best else None,
            "limit_items_per_s": lim["items_per_s"] if lim else None,
        }
        target(f"service / limit at saturation ({w})", r, ">=", TARGET_SERVICE_OVER_LIMIT,
               f"best cell c={best['concurrency']} s={best['size']}" if best else "")
        per_c: dict = {}
        for c in res["meta"]["concurrency"]:
            cells = {}
            for s in res["meta"]["sizes"]:
                sv = next((x for x in service.get(w, []) if x["concurrency"] == c and x["size"] == s), None)
                nv = next((x for x in naive.get(w, []) if x["concurrency"] == c and x["size"] == s), None)
                if sv and nv:
                    cells[str(s)] = _div(sv["items_per_s"], nv["items_per_s"])
            vals = [v for v in cells.values() if v is not None]
            worst = min(vals) if vals else None
            per_c[str(c)] = {"min_over_sizes": worst, "by_size": cells}
            worst_size = next((s for s, v in cells.items() if v == worst), None)
            target(f"service / naive, concurrency {c} ({w})", worst, ">=", TARGET_SERVICE_OVER_NAIVE,
                   f"worst over sizes (size {worst_size})" if worst is not None else "")
        ratios["service_over_naive"][w] = per_c
    # sorted vs unsorted (mixed lengths)
    uns = (res.get("unsorted") or {}).get("mixed", [])
    srt = service.get("mixed", [])
    bu, bs = _best(uns), _best(srt)
    r = _div(bs["items_per_s"] if bs else None, bu["items_per_s"] if bu else None)
    by_cell = {}
    for x in srt:
        y = next((u for u in uns if u["concurrency"] == x["concurrency"] and u["size"] == x["size"]), None)
        if y:
            by_cell[f"c{x['concurrency']}_s{x['size']}"] = _div(x["items_per_s"], y["items_per_s"])
    ratios["sorted_over_unsorted"] = {"ratio": r, "by_cell": by_cell}
    target("sorted / unsorted at saturation (mixed)", r, ">=", TARGET_SORTED_OVER_UNSORTED, "best cell of each")
    # what length-aware batch formation as a whole (sorting + padding cap) buys over plain FIFO batches
    fifo = (res.get("fifo") or {}).get("mixed", [])
    bf = _best(fifo)
    rf = _div(bs["items_per_s"] if bs else None, bf["items_per_s"] if bf else None)
    ratios["length_aware_over_fifo"] = {"ratio": rf}
    target("sort + padding cap / FIFO batches (mixed)", rf, ">=", TARGET_SORTED_OVER_UNSORTED, "best cell of each")
    # added latency, 1 item, 1 client: per request, client latency − the server's own encode + forward
    # for that request (Server-Timing), p50 — paired, so a machine that drifts between phases does
    # not enter it; the difference of two p50s from different phases is kept for reference
    one = next((x for x in srt if x["concurrency"] == 1 and x["size"] == 1), None)
    bare = ((limit.get("workloads") or {}).get("mixed") or {}).get("single_item_ms")
    paired = (one.get("added_ms") or {}).get("p50") if one else None
    unpaired = one["latency_ms"]["p50"] - bare["p50"] if one and one["latency_ms"]["p50"] is not None and bare else None
    ratios["added_latency_ms"] = {"added_p50": paired, "service_p50": one["latency_ms"]["p50"] if one else None,
                                  "service_minus_limit_bare_p50": unpaired, "bare_p50": bare["p50"] if bare else None}
    target("added p50 latency, 1 item, 1 client (ms, mixed)", paired, "<=", TARGET_ADDED_LATENCY_MS,
           "latency − server encode+forward, per request")
    mem = res.get("memory")
    rr = mem["ratio"] if mem else None
    ratios["rss_ratio"] = rr
    n1, n2 = (mem or {}).get("requests", res["meta"]["rss_requests"])
    target(f"RSS after {n2} / after {n1} requests", rr, "<=", 1 + TARGET_RSS_GROWTH)
    return ratios, targets


# -- output -------------------------------------------------------------------------------------
def _f(x, nd: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:,.{nd}f}"


def format_table(res: dict) -> str:
    m = res["meta"]
    lines = []
    th = m["threads"]
    lines.append(f"rewardserve bench{' (quick)' if m['quick'] else ''} — {m['model']} — {m['machine']['cpu_count']} CPUs, "
                 f"torch threads {th['REWARDSERVE_TORCH_THREADS']}, OMP_WAIT_POLICY {th['OMP_WAIT_POLICY']}, "
                 f"uvicorn workers {th['uvicorn_workers']}, "
                 f"load avg at start {m['machine']['loadavg_start']}")
    lines.append(f"cells: {m['seconds']:g} s measured after {m['warmup']:g} s warm-up; pool {m['pool']} items, seed {m['seed']}")
    limit = res.get("limit")
    if limit:
        lines.append("")
        lines.append("limit (in-process, no HTTP, ideal length-sorted batches; tokenization counted separately)")
        lines.append(f"  {'workload':9s} {'tok/item':>8s} {'encode it/s':>11s} {'forward it/s':>12s} {'budget':>7s} "
                     f"{'workers':>9s} {'limit it/s':>10s} {'limit tok/s':>11s} {'tok share':>9s} {'1-item p50 ms':>13s}")
        for w, x in limit["workloads"].items():
            lay_s = f"{x['best_layout']['workers']}x{x['best_layout']['threads_per_worker']}t"
            lines.append(f"  {w:9s} {x['tokens']['mean']:8.1f} {_f(x['encode']['items_per_s']):>11s} "
                         f"{_f(x['forward_items_per_s']):>12s} {x['best_budget']:>7d} {lay_s:>9s} {_f(x['items_per_s']):>10s} "
                         f"{_f(x['tokens_per_s'], 0):>11s} {x['tokenization_share']:>9.0%} {_f(x['single_item_ms']['p50'], 2):>13s}")
    service, naive, uns, fifo = (res.get(n) or {} for n in ("service", "naive", "unsorted", "fifo"))
    if service or naive or uns or fifo:
        lines.append("")
        lines.append("closed-loop HTTP load (items/s; latency ms p50/p90/p99; 503 = rejected requests)")
        lines.append(f"  {'workload':8s} {'conc':>4s} {'size':>4s} | {'service':>9s} {'tok/s':>9s} {'p50':>7s} {'p90':>7s} "
                     f"{'p99':>7s} {'503':>4s} | {'naive':>9s} {'p50':>7s} {'p99':>7s} | {'unsorted':>9s} {'fifo':>7s} | {'svc/naive':>9s}")
        for w in m["workloads"]:
            for s in m["sizes"]:
                for c in m["concurrency"]:
                    def cell(d):
                        return next((x for x in d.get(w, []) if x["concurrency"] == c and x["size"] == s), None)
                    sv, nv, uv, fv = cell(service), cell(naive), cell(uns), cell(fifo)
                    sk = next((x for x in m.get("skipped_cells", {}).get(w, []) if x["concurrency"] == c and x["size"] == s), None)
                    if sk:
                        lines.append(f"  {w:8s} {c:>4d} {s:>4d} | skipped: one round of {c * s} items takes "
                                     f"{sk['round_seconds_at_limit']:.0f} s at the limit rate (> {m['max_round_seconds']:g} s)")
                        continue
                    lat = sv["latency_ms"] if sv else {}
                    nl = nv["latency_ms"] if nv else {}
                    row = (f"  {w:8s} {c:>4d} {s:>4d} | {_f(sv and sv['items_per_s']):>9s} {_f(sv and sv['tokens_per_s'], 0):>9s} "
                           f"{_f(lat.get('p50')):>7s} {_f(lat.get('p90')):>7s} {_f(lat.get('p99')):>7s} "
                           f"{(sv['rejected_503'] + sv['rejected_429']) if sv else '-':>4} | {_f(nv and nv['items_per_s']):>9s} "
                           f"{_f(nl.get('p50')):>7s} {_f(nl.get('p99')):>7s} | {_f(uv and uv['items_per_s']):>9s} "
                           f"{_f(fv and fv['items_per_s']):>7s} | "
                           f"{_f(_div(sv['items_per_s'], nv['items_per_s']) if sv and nv else None, 2):>9s}")
                    flags = [f"{n}: not steady" for n, x in (("service", sv), ("naive", nv), ("unsorted", uv), ("fifo", fv)) if x and not x["steady"]]
                    lines.append(row + (f"  ({'; '.join(flags)})" if flags else ""))
    mem = res.get("memory")
    if mem:
        (n1, r1), (n2, r2) = mem["rss_mb_after"].items()
        lines.append("")
        lines.append(f"memory: service RSS {_f(mem['rss_mb_start'])} MB at start, {_f(r1)} MB after {n1} requests, "
                     f"{_f(r2)} MB after {n2} (ratio {_f(mem['ratio'], 3)}; {mem['concurrency']} clients, 1 short item each)")
    lines.append("")
    lines.append(f"  {'check':52s} {'value':>9s} {'target':>8s}  pass")
    for t in res["targets"]:
        ok = "skip" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
        lines.append(f"  {t['check']:52s} {_f(t['value'], 2):>9s} {t['target']:>8s}  {ok}  {t['note']}")
    lines.append(f"\nwall time {res['meta']['wall_seconds']:.0f} s; JSON: {res['meta']['out']}")
    return "\n".join(lines)


# -- the run ------------------------------------------------------------------------------------
def _model_description(config: str | None) -> str:
    from rewardserve.config import load_settings

    s = load_settings(config)
    return ", ".join(f"{n} ({b.kind}, {b.device}, {b.dtype}, models {'/'.join(b.models)})" for n, b in s.backbones.items())


def run_benchmark(quick: bool = False, seconds: float | None = None, out: str | os.PathLike | None = None,
                  config: str | None = None, skip: tuple[str, ...] | list[str] = (), **options) -> dict:
    """Run the benchmark, write the JSON to ``out`` and return it (also prints the table unless
    ``print_table=False``). ``options``: any field of ``Options`` (concurrency, sizes, pool, …)."""
    o = Options.make(quick=quick, seconds=seconds, config=str(Path(config).resolve()) if config else None,
                     skip=tuple(skip), **options)
    out_path = Path(out) if out else (DEFAULT_QUICK_OUT if o.quick else DEFAULT_OUT)
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="rewardserve-bench-"))
    res: dict = {"meta": {
        "quick": o.quick, "seconds": o.seconds, "warmup": o.warmup, "seed": o.seed, "pool": o.pool,
        "concurrency": list(o.concurrency), "sizes": list(o.sizes), "workloads": list(o.workloads),
        "workload_specs": {w: WORKLOADS[w].to_dict() for w in (*o.workloads, "short")},
        "rss_requests": list(o.rss_requests), "skip": list(o.skip), "config": o.config or "(embedded default)",
        "model": _model_description(o.config),
        "threads": {"REWARDSERVE_TORCH_THREADS": o.threads, "TOKENIZERS_PARALLELISM": "false", "uvicorn_workers": 1,
                    "OMP_WAIT_POLICY": _omp_wait_policy(o) or "(unset: OpenMP default)"},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "out": str(out_path),
    }}
    _log(f"planned: about {o.planned_seconds():.0f} s (skip: {', '.join(o.skip) or 'none'}); logs in {tmp}")
    servers: dict[str, Server] = {}
    envs: dict[str, dict[str, str]] = {}
    try:
        want = []
        if "service" not in o.skip or "memory" not in o.skip:
            want.append(("service", "service", {}))
        if "naive" not in o.skip:
            want.append(("naive", "naive", {}))
        if "unsorted" not in o.skip and "mixed" in o.workloads:
            want.append(("unsorted", "service", {"REWARDSERVE_BATCHING__SORT_BY_LENGTH": "false"}))
        if "fifo" not in o.skip and "mixed" in o.workloads:
            want.append(("fifo", "service", {"REWARDSERVE_BATCHING__SORT_BY_LENGTH": "false",
                                             "REWARDSERVE_BATCHING__MAX_PADDING_RATIO": "1.0"}))
        for name, kind, extra in want:
            envs[name] = _env(o, tmp, name, extra)
            servers[name] = Server(name, kind, o.config, envs[name], tmp)
        if servers:
            _log(f"starting {', '.join(servers)} (in parallel; idle while the others are measured)")
            with ThreadPoolExecutor(len(servers)) as ex:
                for f in [ex.submit(s.start) for s in servers.values()]:
                    f.result()
            res["meta"]["startup_seconds"] = {n: s.startup_seconds[0] for n, s in servers.items()}
        import httpx

        if "naive" in servers:
            res["meta"]["threads"]["naive_server"] = httpx.get(f"{servers['naive'].url}/info", timeout=10).json()
        if "service" in servers:
            res["meta"]["threads"]["service"] = httpx.get(f"{servers['service'].url}/v1/models", timeout=10).json()["runtime"]

        base_env = _env(o, tmp, "limit")
        if "limit" not in o.skip:
            _log("limit: in-process forward, ideal batches")
            cmd = [sys.executable, "-m", "bench.limit", "--workloads", ",".join(o.workloads), "--pool", str(o.pool),
                   "--seed", str(o.seed), "--seconds-per-budget", str(o.limit_seconds),
                   "--latency-seconds", str(o.latency_seconds)]
            if o.config:
                cmd += ["--config", o.config]
            if o.budgets:
                cmd += ["--budgets", ",".join(map(str, o.budgets))]
            elif o.quick:
                cmd += ["--budgets", "quick"]
            res["limit"] = _run_json(cmd, base_env, 900, "limit phase")
            res["meta"]["threads"]["limit_process"] = res["limit"]["threads"]
            for w, x in res["limit"]["workloads"].items():
                _log(f"limit {w}: {x['items_per_s']:.1f} items/s ({x['forward_items_per_s']:.1f} forward only, "
                     f"budget {x['best_budget']}, {x['best_layout']['workers']} worker(s) × "
                     f"{x['best_layout']['threads_per_worker']} thread(s)), single item p50 {x['single_item_ms']['p50']:.2f} ms")
        if "memory" not in o.skip:
            _log(f"memory: {o.rss_requests[1]} single-item requests to a fresh service")
            res["memory"] = run_memory(servers["service"], o, envs["service"])
        rates = {w: x["items_per_s"] for w, x in ((res.get("limit") or {}).get("workloads") or {}).items()}
        res["meta"]["max_round_seconds"] = o.max_round_seconds
        res["meta"]["skipped_cells"] = {w: runnable(o, rates.get(w))[1] for w in o.workloads}
        for w, sk in res["meta"]["skipped_cells"].items():
            if sk:
                _log(f"{w}: skipping cells whose round exceeds {o.max_round_seconds:g} s at the limit rate: "
                     + ", ".join(f"c={x['concurrency']} s={x['size']} ({x['round_seconds_at_limit']:.0f} s)" for x in sk))
        contenders = {n: (servers[n], o.unsorted_min_in_flight if n in MIXED_ONLY else 0)
                      for n in ("service", "naive", *MIXED_ONLY) if n in servers and n not in o.skip}
        for k, w in enumerate(o.workloads):
            here = {n: c for n, c in contenders.items() if n not in MIXED_ONLY or w == "mixed"}
            later = frozenset(n for w2 in o.workloads[k + 1:] for n in contenders if n not in MIXED_ONLY or w2 == "mixed")
            for n, cells in run_cells(here, w, o, base_env, rate=rates.get(w), used_later=later).items():
                res.setdefault(n, {})[w] = cells
        res["meta"]["restarts"] = {n: s.restarts for n, s in servers.items()}
    except BaseException:
        for s in servers.values():
            tail = s.log_tail()
            if tail.strip():
                _log(f"{s.name} log tail:\n{tail}")
        raise
    finally:
        for s in servers.values():
            s.stop()
    res["ratios"], res["targets"] = compute_ratios(res)
    res["meta"]["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    res["meta"]["wall_seconds"] = time.monotonic() - t_start
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(_json_safe(res), indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(tmp, ignore_errors=True)
    if o.print_table:
        print(format_table(res), flush=True)
    return res


def _json_safe(x):
    """Strict JSON: a non-finite ratio (e.g. the naive server answered nothing) is written as a string."""
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else ("-inf" if x < 0 else "nan")
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Throughput/latency benchmark of rewardserve: in-process limit, the service, a naive "
                    "per-request server and the service without length sorting, on one model and workload.")
    p.add_argument("--quick", action="store_true", help="CI-sized run: mixed workload, concurrency 1,4, sizes 1,8, 1.5 s cells")
    p.add_argument("--seconds", type=float, default=None, help="measured seconds per cell (default 3; quick 1.5)")
    p.add_argument("--warmup", type=float, default=None, help="unmeasured seconds per cell (default 1; quick 0.5)")
    p.add_argument("--out", default=None, help=f"JSON output (default {DEFAULT_OUT.relative_to(REPO)}; "
                                               f"--quick: {DEFAULT_QUICK_OUT.relative_to(REPO)})")
    p.add_argument("--config", default=None, help="rewardserve config YAML (default: the embedded one)")
    p.add_argument("--skip", default="", help=f"comma-separated phases or workloads to skip: {', '.join(PHASES + BENCH_WORKLOADS)}")
    p.add_argument("--threads", type=int, default=None, help="torch threads of every contender (default: CPU count)")
    p.add_argument("--omp-wait-policy", default=None, choices=("passive", "active", "inherit"),
                   help="OMP_WAIT_POLICY of every contender (default passive; inherit: leave the environment's)")
    p.add_argument("--concurrency", type=_ints, default=None, help="client counts (default 1,4,16,64)")
    p.add_argument("--sizes", type=_ints, default=None, help="items per request (default 1,8,64)")
    p.add_argument("--pool", type=int, default=None, help="distinct items per workload (default 1024; quick 256)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--budgets", type=_ints, default=None, help="limit sweep token budgets (default by device)")
    p.add_argument("--limit-seconds", type=float, default=None, help="limit phase: seconds per token budget (default 1.5; quick 0.6)")
    p.add_argument("--rss-requests", type=_ints, default=None, help="memory phase checkpoints (default 2000,20000)")
    a = p.parse_args(argv)
    if a.rss_requests is not None and (len(a.rss_requests) != 2 or not 0 < a.rss_requests[0] < a.rss_requests[1]):
        p.error("--rss-requests takes two increasing counts, e.g. 2000,20000")
    skip = tuple(x.strip() for x in a.skip.split(",") if x.strip())
    kw = dict(warmup=a.warmup, threads=a.threads, omp_wait_policy=a.omp_wait_policy, concurrency=a.concurrency, sizes=a.sizes, pool=a.pool,
              seed=a.seed, budgets=a.budgets, rss_requests=a.rss_requests, limit_seconds=a.limit_seconds)
    try:
        Options.make(quick=a.quick, seconds=a.seconds, skip=skip, **kw)  # validate before starting anything
    except ValueError as e:
        p.error(str(e))
    if a.config and not Path(a.config).exists():
        p.error(f"--config {a.config}: no such file")
    run_benchmark(quick=a.quick, seconds=a.seconds, out=a.out, config=a.config, skip=skip, **kw)
    return 0
