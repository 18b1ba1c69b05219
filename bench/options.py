"""The settings of one benchmark run (``Options``), the phase and workload names, where results go,
and the run's log line. Shared by every other module of the package."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .limit import layouts

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results" / "latest.json"
DEFAULT_QUICK_OUT = REPO / "bench" / "results" / "quick.json"
PHASES = ("limit", "service", "naive", "unsorted", "fifo", "memory")
MIXED_ONLY = ("unsorted", "fifo")  # contenders that run only the mixed workload's batching cells
BENCH_WORKLOADS = ("mixed", "uniform")


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
            base = dict(
                seconds=1.5,
                warmup=0.5,
                pool=256,
                concurrency=(1, 4),
                sizes=(1, 8),
                workloads=("mixed",),
                limit_seconds=0.6,
                latency_seconds=1.0,
                rss_requests=(200, 2_000),
                drain_timeout=3.0,
                max_cell_seconds=8.0,
                rss_concurrency=64,
            )
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
                    p not in self.skip for p in MIXED_ONLY
                )
        per_cell = self.seconds + self.warmup + 0.8  # + process start and idle check
        n_budgets = len(self.budgets) if self.budgets else (2 if self.quick else 6)
        n_layouts = len(layouts(False, self.threads or os.cpu_count() or 1))  # a CPU upper estimate
        limit = (
            0
            if "limit" in self.skip
            else 8
            + len(self.workloads) * ((n_layouts * n_budgets + 2) * self.limit_seconds * 1.3 + self.latency_seconds + 2)
        )
        memory = 0 if "memory" in self.skip else self.rss_requests[1] / 250
        return 20 + n * per_cell + limit + memory


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
