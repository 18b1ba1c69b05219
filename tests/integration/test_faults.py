"""Faults: a model whose forward raises, SIGTERM under load, Redis going away and coming back."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml

from rewardclient import RewardClient
from rewardserve.app import create_app
from rewardserve.backends import build_backend
from rewardserve.service_process import ServiceProcess

from ..conftest import LiveServer, RedisServer, tiny_settings


def test_a_failing_forward_fails_its_batch_only(tiny, tmp_path):
    broken = {"on": False}

    def factory(name, cfg, settings):
        backend = build_backend(name, cfg, settings)
        if name == "clsbb":  # test-only: this backbone's forward raises while broken["on"]
            real = backend.forward

            def forward(batch):
                if broken["on"]:
                    raise RuntimeError("CUDA error: device-side assert triggered (injected)")
                return real(batch)

            backend.forward = forward
        return backend

    with LiveServer(create_app(tiny_settings(tiny, tmp_path), backend_factory=factory)) as srv:
        body = {"items": [{"prompt": "p", "response": "r"}]}
        broken["on"] = True
        r = httpx.post(f"{srv.url}/v1/score", json={**body, "models": ["cls"]})
        assert r.status_code == 500
        err = r.json()["error"]
        assert err["type"] == "model_error" and "'clsbb'" in err["message"] and "cls" in err["message"]
        assert httpx.post(f"{srv.url}/v1/score", json={**body, "models": ["a"]}).status_code == 200  # others serve
        broken["on"] = False
        assert httpx.post(f"{srv.url}/v1/score", json={**body, "models": ["cls"]}).status_code == 200  # next batch works
        assert "rewardserve_forward_errors_total" in httpx.get(f"{srv.url}/metrics").text


@pytest.fixture
def config_file(tiny, tmp_path):
    cfg = {"references": {"store": f"sqlite:///{tmp_path / 'refs.db'}"},
           "batching": {"max_wait_ms": 5},
           "backbones": {"enc": {"kind": "encoder_head", "path": str(tiny["encoder"]), "max_length": 64,
                                 "models": {"a": {"head": str(tiny["head_a"])}}}}}
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def test_sigterm_under_load_drains_and_loses_nothing(config_file):
    svc = ServiceProcess(config_file, extra_args=["--drain-seconds", "1.5", "--graceful-timeout", "20"]).start()
    body = {"items": [{"prompt": f"p{i}", "response": "r " * 20} for i in range(16)], "models": ["a"]}
    results, stop = [], threading.Event()

    def client_loop():
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                try:
                    r = c.post(f"{svc.url}/v1/score", json=body)
                except httpx.TransportError:
                    break  # the server stopped accepting: no request was accepted and lost
                results.append(r.status_code)

    threads = [threading.Thread(target=client_loop) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    svc.proc.send_signal(signal.SIGTERM)
    r = httpx.get(f"{svc.url}/readyz", timeout=5)
    assert r.status_code == 503 and r.json()["error"]["message"] == "draining"
    code = svc.proc.wait(30)
    elapsed = time.monotonic() - t0
    stop.set()
    for t in threads:
        t.join(30)
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after its graceful shutdown
    assert elapsed < 20
    assert results and set(results) == {200}, set(results)


def test_redis_outage_is_a_503_then_recovers(tiny, tmp_path):
    redis_srv = RedisServer(tmp_path / "redis").start() if (tmp_path / "redis").mkdir() is None else None
    try:
        settings = tiny_settings(tiny, tmp_path, references={"store": redis_srv.url})
        with LiveServer(create_app(settings)) as srv:
            prompt = "a prompt with a stored reference"
            assert httpx.post(f"{srv.url}/v1/references", json={"model": "a", "entries": [{"prompt": prompt, "value": 2.0}]}).status_code == 200
            body = {"items": [{"prompt": prompt, "response": "r"}], "models": ["a"]}
            assert httpx.post(f"{srv.url}/v1/score", json=body).json()["results"][0]["reference"]["a"] == 2.0
            redis_srv.stop()
            r = httpx.post(f"{srv.url}/v1/score", json=body)
            assert r.status_code == 503 and r.json()["error"]["type"] == "reference_store_unavailable"
            assert r.headers["retry-after"]
            # items whose references are all inline do not need the store
            inline = {"items": [{"prompt": prompt, "response": "r", "reference": {"a": 1.0}}], "models": ["a"]}
            assert httpx.post(f"{srv.url}/v1/score", json=inline).status_code == 200
            # the SDK retries the 503 until Redis is back (same port, AOF data)
            threading.Timer(1.0, redis_srv.start).start()
            with RewardClient(srv.url, backoff_base=0.2, backoff_max=1.0, max_retries=20) as c:
                res = c.score([(prompt, "r")], models=["a"])
            assert res[0].reference["a"] == 2.0  # the right reference, after recovery, with no restart
    finally:
        redis_srv.stop()


def test_load_every_answer_is_correct_or_an_intended_503(tiny, tmp_path):
    """Bounded load (CI form): many concurrent clients for a few seconds; queue and memory settle."""
    settings = tiny_settings(tiny, tmp_path, batching={"max_wait_ms": 2, "max_queued_tokens": 2000})
    with LiveServer(create_app(settings)) as srv:
        expected = httpx.post(f"{srv.url}/v1/score", json={"items": [{"prompt": "load", "response": "test"}], "models": ["a"]}).json()
        want = expected["results"][0]["raw"]["a"]
        codes, latencies, deadline = [], [], time.monotonic() + 5.0

        def worker(_):
            with httpx.Client(timeout=30) as c:
                while time.monotonic() < deadline:
                    t = time.perf_counter()
                    r = c.post(f"{srv.url}/v1/score", json={"items": [{"prompt": "load", "response": "test"}] * 4, "models": ["a"]})
                    latencies.append(time.perf_counter() - t)
                    codes.append(r.status_code)
                    if r.status_code == 200:
                        assert all(abs(x["raw"]["a"] - want) <= 1e-4 for x in r.json()["results"])
                    else:
                        assert r.status_code == 503 and r.headers["retry-after"] and r.json()["error"]["type"] == "overloaded"

        with ThreadPoolExecutor(50) as ex:
            list(ex.map(worker, range(50)))
        assert codes.count(200) > 0 and set(codes) <= {200, 503}
        b = srv.state.scorer.batchers["enc"]
        assert b.queued_items == 0 and b.queued_tokens == 0
