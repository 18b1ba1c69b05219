"""Launching the contenders: every server of a run (the service, the naive baseline, the service
with sorting or the padding cap turned off) in a child process of its own, with the same environment."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .options import REPO, Options, log


def omp_wait_policy(o: Options) -> str | None:
    return os.environ.get("OMP_WAIT_POLICY") if o.omp_wait_policy == "inherit" else o.omp_wait_policy.upper()


def contender_env(o: Options, tmp: Path, name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    pp = os.environ.get("PYTHONPATH")
    policy = omp_wait_policy(o)
    return {
        **({"OMP_WAIT_POLICY": policy} if policy else {}),
        "REWARDSERVE_TORCH_THREADS": str(o.threads),
        "TOKENIZERS_PARALLELISM": "false",
        "REWARDSERVE_REFERENCES__STORE": f"sqlite:///{tmp / f'refs-{name}.db'}",
        "PYTHONPATH": str(REPO) + (os.pathsep + pp if pp else ""),
        **(extra or {}),
    }


class Server:
    """A server child process (rewardserve's ``ServiceProcess``, or the naive baseline through the
    same launcher) whose stderr is drained into a log file so a long run never blocks on a full pipe."""

    def __init__(self, name: str, kind: str, config: str | None, env: dict[str, str], log_dir: Path):
        from rewardserve.service_process import ServiceProcess

        self.name, self.kind, self.env = name, kind, env
        self.sp = ServiceProcess(config=config, env=env)
        if kind == "naive":
            self.sp.cmd = [
                sys.executable,
                "-m",
                "bench.naive_server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.sp.port),
                *(["--config", config] if config else []),
            ]
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
            threading.Thread(target=_copy_stream, args=(err, log), daemon=True).start()
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
                        queued = sum(
                            float(line.rsplit(" ", 1)[1])
                            for line in c.get("/metrics").text.splitlines()
                            if line.startswith("rewardserve_queue_items")
                        )
                        if queued == 0:
                            # a probe queues behind the forward still running, if any
                            c.post(
                                "/v1/score",
                                json={"items": [{"prompt": "hi", "response": "hello"}]},
                                timeout=max(0.1, deadline - time.monotonic()),
                            )
                            return True
                except Exception:
                    pass
                time.sleep(0.05)
        return False


def _copy_stream(src, dst) -> None:
    try:
        shutil.copyfileobj(src, dst)
    except (OSError, ValueError):
        pass
    finally:
        dst.close()


def plan_contenders(o: Options, tmp: Path) -> dict[str, Server]:
    """The servers the run's phases need (not started): the service (also for the memory phase), the
    naive baseline, the unsorted and FIFO services (mixed workload only)."""
    want: list[tuple[str, str, dict[str, str]]] = []
    if "service" not in o.skip or "memory" not in o.skip:
        want.append(("service", "service", {}))
    if "naive" not in o.skip:
        want.append(("naive", "naive", {}))
    if "unsorted" not in o.skip and "mixed" in o.workloads:
        want.append(("unsorted", "service", {"REWARDSERVE_BATCHING__SORT_BY_LENGTH": "false"}))
    if "fifo" not in o.skip and "mixed" in o.workloads:
        want.append(
            (
                "fifo",
                "service",
                {"REWARDSERVE_BATCHING__SORT_BY_LENGTH": "false", "REWARDSERVE_BATCHING__MAX_PADDING_RATIO": "1.0"},
            )
        )
    return {name: Server(name, kind, o.config, contender_env(o, tmp, name, extra), tmp) for name, kind, extra in want}


def start_all(servers: dict[str, Server]) -> None:
    """Start every server in parallel (they stay idle while the others are measured)."""
    log(f"starting {', '.join(servers)} (in parallel; idle while the others are measured)")
    with ThreadPoolExecutor(len(servers)) as ex:
        for f in [ex.submit(s.start) for s in servers.values()]:
            f.result()
