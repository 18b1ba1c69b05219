"""Secure by default: `rewardserve serve` refuses a non-loopback address without API keys, unless
told explicitly; on loopback (the demo) it starts as before."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml

from rewardserve.config import ConfigError, check_exposure, is_loopback_host
from rewardserve.service_process import ServiceProcess, free_port

from ..conftest import tiny_settings


@pytest.fixture
def config_file(tiny, tmp_path):
    data = tiny_settings(tiny, tmp_path).model_dump(mode="json", exclude={"base_dir", "api_keys"})
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def serve(config: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDSERVE_")} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "rewardserve.cli", "serve", "--config", config, "--port", str(free_port()), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3"])
def test_serve_on_a_public_address_without_keys_exits_with_a_clear_message(config_file, host):
    t0 = time.monotonic()
    r = serve(config_file, "--host", host)
    assert r.returncode == 2, r.stderr[-2000:]
    assert time.monotonic() - t0 < 10  # refused at once, before torch or any model is loaded
    msg = r.stderr
    assert f"refusing to listen on {host}" in msg
    for hint in ("REWARDSERVE_API_KEYS", "api_keys_file", "127.0.0.1", "--allow-unauthenticated"):
        assert hint in msg, hint
    assert "Traceback" not in msg


def test_config_host_counts_too(config_file, tmp_path):
    cfg = yaml.safe_load(open(config_file))
    cfg["host"] = "0.0.0.0"
    p = tmp_path / "public.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = serve(str(p))
    assert r.returncode == 2 and "refusing to listen on 0.0.0.0" in r.stderr


def test_loopback_starts_as_before(config_file):
    with ServiceProcess(config_file, env={"REWARDSERVE_API_KEYS": ""}) as svc:  # 127.0.0.1, no keys: the demo
        import httpx

        assert httpx.get(f"{svc.url}/readyz").status_code == 200


@pytest.mark.parametrize(
    "host,keys,allow,refused",
    [
        ("0.0.0.0", None, False, True),
        ("0.0.0.0", "k1-0123456789abcdef,k2-0123456789abcdef", False, False),
        ("0.0.0.0", None, True, False),
        ("rewardserve.example", None, False, True),  # a host name may resolve to any interface
        ("127.0.0.1", None, False, False),
        ("127.0.0.2", None, False, False),
        ("localhost", None, False, False),
        ("::1", None, False, False),
    ],
)
def test_check_exposure(tiny, tmp_path, host, keys, allow, refused):
    s = tiny_settings(tiny, tmp_path, host=host, api_keys=keys, allow_unauthenticated=allow)
    if refused:
        with pytest.raises(ConfigError, match="refusing to listen"):
            check_exposure(s)
    else:
        check_exposure(s)
    assert is_loopback_host(host) == (host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"))


def test_api_keys_file_counts_as_keys(tiny, tmp_path):
    f = tmp_path / "keys.txt"
    f.write_text("# trainers\nkey-one-0123456789abcdef\n")
    check_exposure(tiny_settings(tiny, tmp_path, host="0.0.0.0", api_keys_file=str(f)))
    f.write_text("# no key yet\n")
    with pytest.raises(ConfigError):
        check_exposure(tiny_settings(tiny, tmp_path, host="0.0.0.0", api_keys_file=str(f)))
