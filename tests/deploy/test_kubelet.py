"""Run the rendered overlays as a kubelet would, on this machine (tests/deploy/kubelet.py says how):
Redis and its Sentinels with the real redis-server and their start scripts from the ConfigMap, the
server with the environment the kubelet builds (Secrets, $(VAR) expansion, service links unless the
pod turns them off), the calibration Job of docs/deploy.md against it; then what the cluster checks:
probes on their paths and ports, preStop + SIGTERM within the grace period, no writes outside the
pod's writable paths, the server reaching Redis through the Sentinel Service's name.

Adaptations, each passed as an extra environment variable of the process and nothing else:
- a pod's wildcard listen address becomes its pod IP (REWARDSERVE_HOST, REDIS_EXTRA_ARGS /
  SENTINEL_EXTRA_ARGS ``--bind``): the pods share this machine's network namespace;
- the GPU overlay's backbone runs on the CPU (REWARDSERVE_BACKBONES__MINILM__DEVICE=cpu, the
  environment layer over the ConfigMap's ``device: cuda``): the rest of its pod (config, probes,
  grace period, environment) is the GPU overlay's.
"""

from __future__ import annotations

import random
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from . import kubelet
from .conftest import REPO, find_binary, missing
from .test_k8s import K8S, render

PASSWORD = "0123456789abcdef0123456789abcdef"  # URL-safe, as docs/deploy.md asks
ADMIN_KEY = "test-admin-key-0123456789"
CALIBRATE_KEY = "test-calibrate-key-0123456789"
ITEM = {"prompt": "How do I boil an egg?", "response": "Put it in boiling water for eight minutes."}


@pytest.fixture(scope="module")
def tools():
    for b in ("redis-server", "redis-sentinel", "redis-cli"):
        find_binary(b, "apt-get install -y redis-server redis-sentinel")
    if not any(
        Path(d).glob(kubelet.NSS_WRAPPER)
        for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib", "/usr/lib64")
    ):
        missing("libnss_wrapper.so (the host map of the pods)", "apt-get install -y libnss-wrapper")


def docs_job() -> dict:
    text = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    (job,) = [d for d in map(yaml.safe_load, re.findall(r"```yaml\n(.*?)```", text, re.S)) if d.get("kind") == "Job"]
    return job


def pod_templates(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_every_pod_template_turns_service_links_off(name):
    docs = render(K8S / "overlays" / name)
    for w in [*pod_templates(docs), docs_job()]:
        services = [s for s in docs if s["kind"] == "Service" and s["spec"].get("clusterIP") != "None"]
        links = kubelet.service_link_env(services, lambda s: "10.96.0.12")
        assert w["spec"]["template"]["spec"].get("enableServiceLinks") is False, (
            f"{w['kind']}/{w['metadata']['name']}: without enableServiceLinks: false the kubelet puts "
            + ", ".join(f"{k}={v}" for k, v in links.items() if k.startswith("REWARDSERVE_"))
            + " into the pod's environment"
        )


def _loopback_base() -> str:
    """A random 127.a.b. prefix whose addresses are free on the manifests' ports."""
    for _ in range(20):
        base = f"127.{random.randint(16, 250)}.{random.randint(1, 250)}."
        try:
            for i in range(2, 16):
                for port in (6379, 26379, 8000):
                    with socket.socket() as s:
                        s.bind((base + str(i), port))
            return base
        except OSError:
            continue
    raise AssertionError("no free 127.a.b.0/24 for the pods")


def image_paths(root: Path) -> dict[str, Path]:
    """What the rewardserve image holds (docker/Dockerfile*): /opt/venv (here: this venv) and
    /opt/rewardserve/heads (the package's default heads, copied as the build does)."""
    from rewardserve.config import default_config_path

    opt = root / "image" / "opt-rewardserve"
    (opt / "heads").mkdir(parents=True, exist_ok=True)
    for f in (default_config_path().parent / "heads").glob("*.safetensors"):
        (opt / "heads" / f.name).write_bytes(f.read_bytes())
    return {"/opt/venv": Path(sys.prefix), "/opt/rewardserve": opt}


class Run:
    """The pods of one overlay, started and stopped in order."""

    def __init__(self, name: str, root: Path):
        self.name = name
        docs = render(K8S / "overlays" / name)
        self.cluster = kubelet.Cluster(
            docs,
            root,
            _loopback_base(),
            secrets={  # the overlay's Secrets are empty in git: a private overlay sets them
                "rewardserve-api-keys": {"api-keys": f"{ADMIN_KEY},{CALIBRATE_KEY}"},
                "rewardserve-redis": {"password": PASSWORD},
                "rewardserve-calibrate": {"api-key": CALIBRATE_KEY},
            },
        )
        self.image = image_paths(root)
        dockerfile = REPO / "docker" / ("Dockerfile" if name == "gpu" else "Dockerfile.cpu")
        self.server_env = kubelet.dockerfile_env(dockerfile)
        self.redis_data = root / "image" / "redis-data"
        self.redis_data.mkdir(parents=True)
        self.pods: list[kubelet.Pod] = []

    def add_job(self, job: dict, prompts: str, policy: Path) -> None:
        ns = self.cluster.namespace
        self.cluster.docs += [
            {**job, "metadata": {**job["metadata"], "namespace": ns}},
            {
                "kind": "ConfigMap",
                "metadata": {"name": "calibration-prompts", "namespace": ns},
                "data": {"prompts.jsonl": prompts},
            },
        ]
        self.cluster.docs.append(
            {"kind": "Secret", "metadata": {"name": "rewardserve-calibrate", "namespace": ns}, "data": {"api-key": ""}}
        )
        self.cluster.claims["base-policy"] = policy

    def pod(self, kind: str, workload: str, index: int = 0, image: str = "rewardserve") -> kubelet.Pod:
        w = self.cluster.one(kind, workload)
        if image == "rewardserve":  # each container has its own root filesystem: its own home folder
            home = self.cluster.root / f"{workload}-{index}" / "home"
            home.mkdir(parents=True, exist_ok=True)
            env, paths, workdir = self.server_env, {**self.image, "/home/rewardserve": home}, "/home/rewardserve"
        else:  # redis:7.4.2-alpine: WORKDIR /data (a volume in the Redis pods, the image's folder in the Sentinels')
            env, paths, workdir = {"PATH": kubelet.DEFAULT_PATH}, {"/data": self.redis_data}, "/data"
        p = kubelet.Pod(self.cluster, w, f"{workload}-{index}", env, paths, workdir)
        self.pods.append(p)
        return p

    def stop_all(self) -> None:
        for p in reversed(self.pods):
            p.kill()


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    from rewardlab import tiny_models

    return tiny_models.make_causal_lm(tmp_path_factory.mktemp("policy") / "policy")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_the_overlay_runs_as_the_kubelet_runs_it(name, tools, tmp_path, policy):
    import redis

    run = Run(name, tmp_path)
    cl = run.cluster
    if name == "cpu":
        run.add_job(docs_job(), '{"prompt": "How do I boil an egg?"}\n{"prompt": "Name a prime."}\n', policy)
    cl.name_pods()
    # every pod prepared first (volumes, environment), then the folders compared before/after
    store = []
    for sts, script_var in (("rewardserve-redis", "REDIS_EXTRA_ARGS"), ("rewardserve-sentinel", "SENTINEL_EXTRA_ARGS")):
        for i in range(cl.one("StatefulSet", sts)["spec"]["replicas"]):
            p = run.pod("StatefulSet", sts, i, image="redis")
            store.append((p, {script_var: f"--bind {p.ip}"}))
    srv = run.pod("Deployment", "rewardserve")
    job = run.pod("Job", "rewardserve-calibrate") if name == "cpu" else None
    watched = [tmp_path, REPO]
    skip = [
        REPO / ".venv",
        REPO / ".git",
        *(w for p in run.pods for w in p.writable),
        *(p.dir / "log" for p in run.pods),
    ]
    before = kubelet.snapshot(watched, skip=skip)
    try:
        # -- Redis and the Sentinels (StatefulSets, podManagementPolicy Parallel: all at once) --
        for p, extra_env in store:
            p.start(extra_env)
        for p, _ in store:
            p.wait_for_probe("readinessProbe")
            assert p.probe("livenessProbe")[0], p.logs()
        # -- the server --
        extra = {"REWARDSERVE_HOST": srv.ip}
        if name == "gpu":
            extra["REWARDSERVE_BACKBONES__MINILM__DEVICE"] = "cpu"
        assert "REWARDSERVE_PORT" not in srv.env or srv.env["REWARDSERVE_PORT"] == "8000"  # the image's, no link
        srv.start(extra)
        took = srv.wait_for_probe("startupProbe")
        for probe in ("readinessProbe", "livenessProbe"):
            ok, what = srv.probe(probe)
            assert ok, f"{probe}: {what}\n{srv.logs()}"
        base = f"http://{srv.ip}:{srv.port('http')}"
        auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
        assert httpx.post(f"{base}/v1/score", json={"items": [ITEM]}, timeout=30).status_code == 401  # keys enforced
        r = httpx.post(f"{base}/v1/score", json={"items": [ITEM]}, headers=auth, timeout=30)
        assert r.status_code == 200, r.text
        # references go to the Redis master that the Sentinel Service names (redis+sentinel://…@rewardserve-sentinel)
        r = httpx.post(
            f"{base}/v1/references",
            json={"model": "helpful", "entries": [{"prompt": ITEM["prompt"], "value": 0.25}]},
            headers=auth,
            timeout=30,
        )
        assert r.status_code == 200, r.text
        master = redis.Redis(host=cl.pod_ip("rewardserve-redis-0"), port=6379, password=PASSWORD, socket_timeout=5)
        replica = redis.Redis(host=cl.pod_ip("rewardserve-redis-1"), port=6379, password=PASSWORD, socket_timeout=5)
        assert master.dbsize() >= 1 and master.info("replication")["role"] == "master"
        deadline = time.monotonic() + 10
        while replica.dbsize() < master.dbsize() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert replica.dbsize() == master.dbsize()
        # -- the calibration Job of docs/deploy.md, against the server's Service --
        if job is not None:
            job.start()
            job.proc.wait(180)
            assert job.proc.returncode == 0, f"the calibration Job failed (kubectl logs):\n{job.logs()}"
            sets = httpx.get(f"{base}/v1/reference-sets", headers=auth, timeout=30).json()["reference_sets"]
            (default,) = [s for s in sets if s["name"] == "default"]
            assert default["references"] >= 1 + 2 * 2, default  # the stored one + 2 prompts × 2 models
        # -- termination: preStop sleep (still serving), SIGTERM (drain: /readyz 503, requests still
        # answered), exit within terminationGracePeriodSeconds --
        seen: dict[str, int | str] = {}
        threads: list[threading.Thread] = []

        def during_pre_stop() -> None:
            seen["ready_during_pre_stop"] = httpx.get(f"{base}/readyz", timeout=5).status_code

        def request(what: str) -> None:
            try:
                if what == "score_after_sigterm":
                    r = httpx.post(f"{base}/v1/score", json={"items": [ITEM]}, headers=auth, timeout=30)
                else:
                    time.sleep(0.1)  # the signal handler has run
                    r = httpx.get(f"{base}/readyz", timeout=5)
                seen[what] = r.status_code
            except httpx.HTTPError as e:
                seen[what] = repr(e)

        def after_sigterm() -> None:  # while the server drains (--drain-seconds, 1 s)
            for what in ("score_after_sigterm", "ready_after_sigterm"):
                threads.append(threading.Thread(target=request, args=(what,), daemon=True))
                threads[-1].start()

        seconds, code = srv.terminate(during_pre_stop, after_sigterm)
        for t in threads:
            t.join(30)
        grace = srv.spec["terminationGracePeriodSeconds"]
        # uvicorn re-raises SIGTERM once its graceful shutdown is done: exit code 143 in the pod's status
        assert code in (0, -signal.SIGTERM) and seconds < grace, (
            f"exit {code} after {seconds:.1f} s (grace {grace} s):\n{srv.logs()}"
        )
        assert seen == {"ready_during_pre_stop": 200, "ready_after_sigterm": 503, "score_after_sigterm": 200}, seen
        for p, _ in reversed(store):
            seconds, code = p.terminate()
            assert code == 0 and seconds < p.spec["terminationGracePeriodSeconds"], (p.name, code, p.logs())
        print(f"{name}: server ready after {took:.1f} s")
    finally:
        run.stop_all()
    # nothing written but in the writable volumes (emptyDirs, the Redis PVCs): not in the image's
    # folders (home, /opt/…), not in the read-only ConfigMap mounts, not in the checkout
    after = kubelet.snapshot(watched, skip=skip)
    assert not kubelet.changed(before, after), kubelet.changed(before, after)
    for p in run.pods:
        for mount, host in p.volumes.items():
            if host not in p.writable and host.is_relative_to(p.dir):  # the ConfigMaps
                assert all(f.stat().st_mode & 0o222 == 0 for f in host.iterdir()), (p.name, mount)


def test_the_server_starts_with_the_service_links_of_a_pod_that_keeps_them(tools, tmp_path):
    """A pod without enableServiceLinks: false gets REWARDSERVE_PORT=tcp://… (the Service
    rewardserve): the server ignores service links and starts."""
    run = Run("cpu", tmp_path)
    cl = run.cluster
    cl.name_pods()
    w = cl.one("Deployment", "rewardserve")
    w["spec"]["template"]["spec"]["enableServiceLinks"] = True
    srv = run.pod("Deployment", "rewardserve")
    assert srv.env["REWARDSERVE_PORT"].startswith("tcp://") and "REWARDSERVE_SENTINEL_SERVICE_HOST" in srv.env
    try:
        # /healthz answers once the settings are read and the port is open (the models load behind
        # it, and the Redis store is not needed for that): the container would not be restarted
        srv.start({"REWARDSERVE_HOST": srv.ip})
        srv.wait_for_probe("livenessProbe", budget=srv.container["startupProbe"]["failureThreshold"] * 5)
        srv.kill()
    finally:
        run.stop_all()


def test_the_emulated_kubelet_expands_and_links_as_the_kubelet_does():
    """The rules of k8s.io/kubernetes third_party/forked/golang/expansion and pkg/kubelet/envvars."""
    assert kubelet.expand("$(A)-$(B)", {"A": "x"}) == "x-$(B)"  # undefined: left as it is
    assert kubelet.expand("$$(A) $$ a$b $(A", {"A": "x"}) == "$(A) $ a$b $(A"  # escapes, no reference
    assert kubelet.expand("$(A)", {}, {"A": "from links"}) == "from links"
    svc = {"metadata": {"name": "my-svc"}, "spec": {"ports": [{"name": "http-x", "port": 80}]}}
    assert kubelet.service_link_env([svc], lambda s: "10.0.0.1") == {
        "MY_SVC_SERVICE_HOST": "10.0.0.1",
        "MY_SVC_SERVICE_PORT": "80",
        "MY_SVC_SERVICE_PORT_HTTP_X": "80",
        "MY_SVC_PORT": "tcp://10.0.0.1:80",
        "MY_SVC_PORT_80_TCP": "tcp://10.0.0.1:80",
        "MY_SVC_PORT_80_TCP_PROTO": "tcp",
        "MY_SVC_PORT_80_TCP_PORT": "80",
        "MY_SVC_PORT_80_TCP_ADDR": "10.0.0.1",
    }
    headless = {"metadata": {"name": "h"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}}
    assert kubelet.service_link_env([headless], lambda s: "10.0.0.2") == {}
