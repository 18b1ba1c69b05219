"""Health that tells the truth, against a live server with fault-injecting backends: failing
forwards and a hung forward turn /readyz to 503 first, then /healthz; recovery returns both to 200.
And every series the HPA and the dashboard read has a sample from start-up."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import httpx

from rewardserve.app import create_app
from rewardserve.backends import build_backend

from ..conftest import LiveServer, tiny_settings

HEALTH = {
    "max_consecutive_failures": 3,
    "max_forward_seconds": 0.5,
    "liveness_grace_seconds": 1.5,
    "recheck_seconds": 0.3,
}
BODY = {"items": [{"prompt": "p", "response": "r"}], "models": ["cls"]}


def faulty_factory(mode: dict):
    """Backends as configured, except that the forward of backbone ``clsbb`` raises while
    ``mode["fail"]`` and blocks until ``mode["release"]`` is set while ``mode["hang"]`` (test only)."""

    def factory(name, cfg, settings):
        backend = build_backend(name, cfg, settings)
        if name == "clsbb":
            real = backend.forward

            def forward(batch):
                if mode.get("fail"):
                    raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
                if mode.get("hang"):
                    mode["release"].wait(30)
                return real(batch)

            backend.forward = forward
        return backend

    return factory


def probes(url: str) -> tuple[int, int]:
    return httpx.get(f"{url}/readyz").status_code, httpx.get(f"{url}/healthz").status_code


def wait_for(url: str, want: tuple[int, int], timeout: float = 10.0) -> float:
    """Seconds until (readyz, healthz) == want; fails after ``timeout``."""
    t0 = time.monotonic()
    while (got := probes(url)) != want:
        assert time.monotonic() - t0 < timeout, f"probes {got}, expected {want}"
        time.sleep(0.05)
    return time.monotonic() - t0


def test_failing_forwards_flip_readiness_then_liveness_and_recover(tiny, tmp_path):
    mode: dict = {}
    settings = tiny_settings(tiny, tmp_path, health=HEALTH)
    with LiveServer(create_app(settings, backend_factory=faulty_factory(mode))) as srv:
        assert probes(srv.url) == (200, 200)
        mode["fail"] = True
        for i in range(HEALTH["max_consecutive_failures"]):
            assert probes(srv.url) == (200, 200), f"unready after only {i} failures"
            t_last = time.monotonic()  # the streak cannot start before this request
            r = httpx.post(f"{srv.url}/v1/score", json=BODY)
            assert r.status_code == 500 and r.json()["error"]["type"] == "model_error"
        r = httpx.get(f"{srv.url}/readyz")
        assert r.status_code == 503
        msg = r.json()["error"]["message"]
        assert "'clsbb'" in msg and "illegal memory access" in msg
        # (how the streak counts, to the forward, is tests/unit/test_health.py's, on a fake clock)
        assert httpx.get(f"{srv.url}/healthz").status_code == 200  # readiness first: traffic moves away
        # the other backbone is fine, but the pod as a whole leaves the Service
        assert httpx.post(f"{srv.url}/v1/score", json={**BODY, "models": ["a"]}).status_code == 200
        assert probes(srv.url)[0] == 503
        wait_for(srv.url, (503, 503))  # then liveness, after the grace period
        assert time.monotonic() - t_last >= HEALTH["liveness_grace_seconds"]
        r = httpx.get(f"{srv.url}/healthz")
        assert r.json()["error"]["type"] == "not_live" and "liveness_grace_seconds" in r.json()["error"]["message"]
        # the check forwards the pod runs by itself (no traffic reaches an unready pod) keep failing...
        errors = srv.state.metrics.forward_errors.labels("clsbb")._value.get()
        time.sleep(4 * HEALTH["recheck_seconds"])
        assert probes(srv.url) == (503, 503)
        assert srv.state.metrics.forward_errors.labels("clsbb")._value.get() == errors  # checks are not batches
        # ...until the fault clears: without a single request, both probes answer 200 again
        mode["fail"] = False
        wait_for(srv.url, (200, 200), timeout=15)
        assert httpx.post(f"{srv.url}/v1/score", json=BODY).status_code == 200
        assert probes(srv.url) == (200, 200)


def test_a_hung_forward_flips_readiness_then_liveness_and_recovers(tiny, tmp_path):
    mode: dict = {"release": threading.Event()}
    settings = tiny_settings(tiny, tmp_path, health=HEALTH)
    with LiveServer(create_app(settings, backend_factory=faulty_factory(mode))) as srv:
        mode["hang"] = True
        answers: list[int] = []
        t = threading.Thread(
            target=lambda: answers.append(httpx.post(f"{srv.url}/v1/score", json=BODY, timeout=60).status_code)
        )
        t0 = time.monotonic()
        t.start()
        wait_for(srv.url, (503, 200))
        unready_after = time.monotonic() - t0
        r = httpx.get(f"{srv.url}/readyz")
        assert "'clsbb'" in r.json()["error"]["message"] and "max_forward_seconds=0.5" in r.json()["error"]["message"]
        wait_for(srv.url, (503, 503))
        dead_after = time.monotonic() - t0
        assert HEALTH["max_forward_seconds"] <= unready_after < dead_after
        assert dead_after >= HEALTH["max_forward_seconds"] + HEALTH["liveness_grace_seconds"]
        mode["hang"] = False
        mode["release"].set()  # the forward returns: the request is answered, both probes recover
        t.join(30)
        assert answers == [200]
        assert probes(srv.url) == (200, 200)
        print(f"\nhung forward: /readyz 503 after {unready_after:.2f} s, /healthz 503 after {dead_after:.2f} s")


def _samples(text: str) -> dict[str, set[str]]:
    """metric sample name -> the label sets it has samples for."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ", line)
        if m:
            out.setdefault(m.group(1), set()).add(m.group(2) or "")
    return out


def test_every_series_the_hpa_and_dashboard_read_exists_before_the_first_request(tiny, tmp_path):
    settings = tiny_settings(tiny, tmp_path)
    with LiveServer(create_app(settings)) as srv:
        text = httpx.get(f"{srv.url}/metrics").text  # nothing scored yet
    for b in settings.backbones:
        assert f'rewardserve_queue_tokens{{backbone="{b}"}} 0.0' in text  # the HPA's input: 0, not absent
        assert f'rewardserve_queue_items{{backbone="{b}"}} 0.0' in text
    samples = _samples(text)
    repo = Path(__file__).resolve().parents[2]
    dash = json.loads((repo / "k8s" / "grafana-dashboard.json").read_text())
    names = set(
        re.findall(r"\brewardserve_[a-z_]+", " ".join(t["expr"] for p in dash["panels"] for t in p.get("targets", [])))
    )
    per_route = {n for n in names if n.startswith(("rewardserve_requests", "rewardserve_request_seconds"))}
    assert names - per_route, "the dashboard reads no per-backbone or per-model series?"
    missing = []
    for n in sorted(names - per_route):  # per-route series exist once a route is hit (the probes hit some)
        key, want = (
            ("model", settings.model_names())
            if n.startswith("rewardserve_items_scored")
            else ("backbone", list(settings.backbones))
        )
        missing += [f"{n}{{{key}={v}}}" for v in want if not any(f'{key}="{v}"' in ls for ls in samples.get(n, set()))]
    assert not missing, missing
