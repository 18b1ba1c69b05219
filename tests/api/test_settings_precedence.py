"""`rewardserve serve` as a process: a flag wins over the environment (as in uvicorn, vLLM, kubectl)."""

from __future__ import annotations

import httpx
import pytest

from rewardserve.service_process import ServiceProcess, free_port


def test_the_port_flag_wins_over_rewardserve_port():
    env_port = free_port()
    with ServiceProcess(env={"REWARDSERVE_PORT": str(env_port), "REWARDSERVE_API_KEYS": ""}) as svc:
        assert svc.port != env_port
        assert httpx.get(f"{svc.url}/healthz", timeout=5).status_code == 200  # --port
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{env_port}/healthz", timeout=5)
