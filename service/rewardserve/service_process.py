"""Run ``rewardserve serve`` as a child process and wait until it is ready (demo, bench, tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import IO

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServiceProcess:
    def __init__(
        self,
        config: str | None = None,
        port: int = 0,
        env: dict[str, str] | None = None,
        ready_timeout: float = 300.0,
        extra_args: list[str] | None = None,
        quiet: bool = True,
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [
            sys.executable,
            "-m",
            "rewardserve.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            *(["--config", config] if config else []),
            *(extra_args or []),
        ]
        self.env = {**os.environ, **(env or {})}
        self.ready_timeout = ready_timeout
        self.quiet = quiet
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0
        self.log: IO[bytes] | None = None

    def start(self) -> ServiceProcess:
        t0 = time.monotonic()
        # the server's log goes to a file (a pipe nobody reads would block a chatty server)
        self.log = (
            tempfile.NamedTemporaryFile(prefix="rewardserve-", suffix=".log", delete=False) if self.quiet else None
        )
        self.proc = subprocess.Popen(
            self.cmd, env=self.env, stdout=self.log or None, stderr=subprocess.STDOUT if self.quiet else None
        )
        deadline = t0 + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rewardserve serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    self.startup_seconds = time.monotonic() - t0
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"rewardserve was not ready within {self.ready_timeout} s")

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log so far (empty when it logs to this process's output)."""
        if self.log is None:
            return ""
        return open(self.log.name, encoding="utf-8", errors="replace").read()[-chars:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        try:
            if self.proc is None or self.proc.poll() is not None:
                return self.proc.returncode if self.proc else None
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()
        finally:
            if self.log is not None and (self.proc is None or self.proc.poll() is not None):
                self.log.close()
                os.unlink(self.log.name)
                self.log = None

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
