"""Readiness while loading, queue overload (503 + Retry-After), client disconnects."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from rewardserve.app import create_app
from rewardserve.backends import build_backend

from ..conftest import LiveServer, tiny_settings


def test_readyz_is_503_until_models_are_loaded(tiny, tmp_path):
    gate = threading.Event()

    def gated_factory(name, cfg, settings):
        gate.wait(30)
        return build_backend(name, cfg, settings)

    app = create_app(tiny_settings(tiny, tmp_path), backend_factory=gated_factory)
    with LiveServer(app, wait_ready=False) as srv:
        assert httpx.get(f"{srv.url}/healthz").status_code == 200
        r = httpx.get(f"{srv.url}/readyz")
        assert r.status_code == 503 and r.headers["retry-after"]
        r = httpx.post(f"{srv.url}/v1/score", json={"items": [{"prompt": "p", "response": "r"}]})
        assert r.status_code == 503 and r.json()["error"]["type"] == "not_ready"
        gate.set()
        deadline = time.monotonic() + 60
        while httpx.get(f"{srv.url}/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = httpx.post(f"{srv.url}/v1/score", json={"items": [{"prompt": "p", "response": "r"}], "models": ["a"]})
        assert r.status_code == 200


def test_load_failure_is_reported_by_readyz(tiny, tmp_path):
    settings = tiny_settings(tiny, tmp_path)
    settings.backbones["clsbb"].path = str(tmp_path / "does-not-exist")
    with LiveServer(create_app(settings), wait_ready=False) as srv:
        deadline = time.monotonic() + 60
        while srv.state.load_error is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = httpx.get(f"{srv.url}/readyz")
        assert r.status_code == 503 and "loading models failed" in r.json()["error"]["message"]
        assert r.json()["error"]["type"] == "load_failed" and "retry-after" not in r.headers  # no use retrying
        r = httpx.post(f"{srv.url}/v1/score", json={"items": [{"prompt": "p", "response": "r"}], "models": ["a"]})
        assert r.status_code == 503 and r.json()["error"]["type"] == "load_failed"
        assert "does-not-exist" in r.json()["error"]["message"]


def test_full_queue_answers_503_with_retry_after(tiny, tmp_path):
    # a small queue and a long wait for company: concurrent requests overflow it
    settings = tiny_settings(
        tiny, tmp_path, batching={"max_wait_ms": 300, "max_queued_tokens": 40, "max_batch_tokens": 100000}
    )
    with LiveServer(create_app(settings)) as srv:
        body = {"items": [{"prompt": "hello there", "response": "general kenobi " * 3}], "models": ["a"]}

        def post(_):
            with httpx.Client(base_url=srv.url, timeout=30) as c:
                return c.post("/v1/score", json=body)

        with ThreadPoolExecutor(8) as ex:
            rs = list(ex.map(post, range(8)))
        codes = sorted(r.status_code for r in rs)
        assert 200 in codes and 503 in codes, codes
        for r in rs:
            if r.status_code == 503:
                assert int(r.headers["retry-after"]) >= 1
                assert r.json()["error"]["type"] == "overloaded"
        # the queue drains; nothing is left behind
        assert srv.state.registry.backbones["enc"].batcher.queued_tokens == 0
        assert post(0).status_code == 200


def test_disconnected_client_items_are_dropped_before_the_forward(tiny, tmp_path):
    settings = tiny_settings(tiny, tmp_path, batching={"max_wait_ms": 1500, "max_batch_tokens": 100000})
    with LiveServer(create_app(settings)) as srv:
        batcher = srv.state.registry.backbones["enc"].batcher
        forwards = batcher.forwards
        body = {"items": [{"prompt": "p", "response": f"r {i}"} for i in range(5)], "models": ["a"]}
        try:
            httpx.post(f"{srv.url}/v1/score", json=body, timeout=0.3)
        except httpx.TimeoutException:
            pass
        time.sleep(2.5)  # past max_wait: the batch would have run by now
        assert batcher.forwards == forwards
        assert batcher.queued_items == 0 and batcher.queued_tokens == 0
        dropped = [s for s in srv.state.metrics.dropped.collect()[0].samples if s.name.endswith("_total")]
        assert sum(s.value for s in dropped) == 5


def test_api_keys_guard_every_route_but_the_open_ones(tiny, tmp_path, monkeypatch):
    keyfile = tmp_path / "keys"
    keyfile.write_text("# team keys\nfile-key-123-0123456789abcdef\n")
    monkeypatch.setenv("REWARDSERVE_API_KEYS", "env-key-1-0123456789abcdef, env-key-2-0123456789abcdef")
    settings = tiny_settings(tiny, tmp_path, api_keys_file=str(keyfile))
    assert "env-key-1-0123456789abcdef" not in repr(settings)  # a secret
    with LiveServer(create_app(settings)) as srv:
        body = {"items": [{"prompt": "p", "response": "r"}], "models": ["a"]}
        for path in ("/healthz", "/readyz", "/metrics"):
            assert httpx.get(srv.url + path).status_code == 200
        r = httpx.post(f"{srv.url}/v1/score", json=body)
        assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
        r = httpx.post(f"{srv.url}/v1/score", json=body, headers={"Authorization": "Bearer wrong-key"})
        assert r.status_code == 401 and "wrong-key" not in r.text
        for key in ("env-key-1-0123456789abcdef", "env-key-2-0123456789abcdef", "file-key-123-0123456789abcdef"):
            assert (
                httpx.post(f"{srv.url}/v1/score", json=body, headers={"Authorization": f"Bearer {key}"}).status_code
                == 200
            )
        for method, path in (
            ("GET", "/v1/models"),
            ("POST", "/v1/references"),
            ("POST", "/get_reward"),
            ("POST", "/score"),
        ):
            assert httpx.request(method, srv.url + path, json={}).status_code == 401
