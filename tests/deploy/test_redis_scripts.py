"""The start scripts of the Redis and Sentinel pods (k8s/base/redis/*.sh), run as they are on loopback
with Debian's redis-server: password and noeviction in effect, an empty password refused, a
failover by the Sentinels they configure, and a killed master that rejoins as a replica of the
promoted one (no split brain)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import REPO, missing

SCRIPTS = REPO / "k8s" / "base" / "redis"
PASSWORD = "0123456789abcdef-test-password"


@pytest.fixture
def redis_bin():
    for b in ("redis-server", "redis-cli"):
        if not shutil.which(b):
            missing(f"`{b}`", "apt-get install -y redis-server")
    import redis

    return redis


class Started:
    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def run(self, script: str, env: dict, log: Path) -> subprocess.Popen:
        p = subprocess.Popen(
            ["sh", str(SCRIPTS / script)],
            env={"PATH": os.environ["PATH"], **env},
            stdout=open(log, "w"),
            stderr=subprocess.STDOUT,
        )
        self.procs.append(p)
        return p

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


def wait(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = cond()
            if v:
                return v
        except Exception:
            pass
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_an_empty_password_stops_the_pod(redis_bin, tmp_path):
    for script in ("redis-start.sh", "sentinel-start.sh"):
        r = subprocess.run(
            ["sh", str(SCRIPTS / script)],
            env={"PATH": os.environ["PATH"], "REDIS_PASSWORD": ""},
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert r.returncode != 0 and "REDIS_PASSWORD is empty" in r.stderr, (script, r.stderr)


@pytest.mark.slow
def test_scripts_give_a_protected_non_evicting_redis_that_fails_over_and_rejoins(redis_bin, tmp_path):
    from rewardserve.service_process import free_port

    redis = redis_bin
    started = Started()
    rp = [free_port() for _ in range(2)]
    sp = [free_port() for _ in range(3)]
    try:

        def redis_env(i: int) -> dict:
            d = tmp_path / f"redis{i}"
            (d / "data").mkdir(parents=True, exist_ok=True)
            (d / "conf").mkdir(exist_ok=True)
            return {
                "REDIS_PASSWORD": PASSWORD,
                "SELF_HOST": "127.0.0.1",
                "SELF_PORT": str(rp[i]),
                "SEED_MASTER_HOST": "127.0.0.1",
                "SEED_MASTER_PORT": str(rp[0]),
                "SENTINEL_HOST": "127.0.0.1",
                "SENTINEL_PORT": str(sp[0]),
                "MASTER_NAME": "rs",
                "MAXMEMORY": "64mb",
                "DATA_DIR": str(d / "data"),
                "CONF_DIR": str(d / "conf"),
                "REDIS_EXTRA_ARGS": "--bind 127.0.0.1",
            }

        for i in range(2):
            started.run("redis-start.sh", redis_env(i), tmp_path / f"redis{i}.log")
        nodes = [redis.Redis(port=p, password=PASSWORD, socket_timeout=2, decode_responses=True) for p in rp]
        wait(lambda: nodes[1].info("replication")["master_link_status"] == "up", 30, "the replica did not sync")
        assert nodes[0].info("replication")["role"] == "master"
        # password required, writes refused (not evicted) beyond maxmemory, AOF on
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=rp[0], socket_timeout=2).set("k", "v")
        cfg = nodes[0].config_get("*")
        assert (
            cfg["maxmemory-policy"] == "noeviction"
            and int(cfg["maxmemory"]) == 64 * 2**20
            and cfg["appendonly"] == "yes"
        )
        conf_file = tmp_path / "redis0" / "conf" / "redis.conf"
        assert oct(conf_file.stat().st_mode & 0o777) == "0o600"
        for i in range(3):
            d = tmp_path / f"sentinel{i}"
            d.mkdir()
            started.run(
                "sentinel-start.sh",
                {
                    "REDIS_PASSWORD": PASSWORD,
                    "SELF_HOST": "127.0.0.1",
                    "SELF_PORT": str(sp[i]),
                    "PEERS": " ".join(f"127.0.0.1:{p}" for p in sp),
                    "REDIS_NODES": " ".join(f"127.0.0.1:{p}" for p in rp),
                    "MASTER_NAME": "rs",
                    "QUORUM": "2",
                    "DOWN_AFTER_MS": "500",
                    "FAILOVER_TIMEOUT_MS": "5000",
                    "CONF_DIR": str(d),
                    "SENTINEL_EXTRA_ARGS": "--bind 127.0.0.1",
                },
                tmp_path / f"sentinel{i}.log",
            )
        sentinels = [redis.Redis(port=p, password=PASSWORD, socket_timeout=2, decode_responses=True) for p in sp]
        wait(
            lambda: all(
                s.sentinel_master("rs")["num-other-sentinels"] == 2 and s.sentinel_master("rs")["num-slaves"] == 1
                for s in sentinels
            ),
            30,
            "the sentinels did not find each other and the replica",
        )
        # the sentinels require the Secret's password too (before, anyone reaching them could reconfigure them)
        for p in sp:
            with pytest.raises(redis.AuthenticationError):
                redis.Redis(port=p, socket_timeout=2).sentinel_masters()
        nodes[0].hset("rewardserve:refs:m", "fp", '{"value": 1.5}')
        assert nodes[0].wait(1, 5000) == 1
        # the master dies: the sentinels promote the replica
        started.procs[0].send_signal(signal.SIGKILL)
        started.procs[0].wait(10)
        t0 = time.monotonic()
        wait(lambda: sentinels[2].sentinel_get_master_addr_by_name("rs")[1] == rp[1], 30, "no failover")
        promoted = time.monotonic() - t0
        wait(
            lambda: all(s.sentinel_get_master_addr_by_name("rs")[1] == rp[1] for s in sentinels),
            10,
            "the sentinels did not agree on the new master",
        )
        assert nodes[1].info("replication")["role"] == "master"
        assert nodes[1].hget("rewardserve:refs:m", "fp") == '{"value": 1.5}'
        # the old master restarts with the same script and data: it asks the sentinels and rejoins as a replica
        started.run("redis-start.sh", redis_env(0), tmp_path / "redis0-again.log")
        wait(
            lambda: (
                nodes[0].info("replication")["role"] == "slave" and nodes[0].info("replication")["master_port"] == rp[1]
            ),
            30,
            "the old master did not rejoin as a replica",
        )
        log = (tmp_path / "redis0-again.log").read_text()
        assert f"the sentinels name 127.0.0.1 {rp[1]} as the master" in log
        for f in tmp_path.glob("*.log"):
            assert PASSWORD not in f.read_text()
        print(f"\nscripts: replica promoted {promoted:.2f} s after the master was killed (down-after 500 ms)")
    finally:
        started.stop()
