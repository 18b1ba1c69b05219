"""The SDK against live servers: the real service, and small real HTTP servers that fail on purpose."""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rewardclient import (
    AsyncRewardClient,
    AuthenticationError,
    BadRequestError,
    ConnectionFailed,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RewardClient,
    RewardServeError,
    ServerError,
    ServiceUnavailableError,
    prompt_fingerprint,
)
from rewardserve.service_process import free_port

ITEMS = [
    {"id": str(i), "prompt": f"question {i}", "response": "answer " * (i % 5 + 1), "reference": {"b": 0.0}}
    for i in range(10)
]


def test_chunking_keeps_order_and_values(server):
    with (
        RewardClient(server.url) as one,
        RewardClient(server.url, max_items_per_request=3, max_concurrency=3) as chunked,
    ):
        whole = one.score(ITEMS)
        parts = chunked.score(ITEMS)
    assert [r.id for r in parts] == [str(i) for i in range(10)]
    for a, b in zip(whole, parts):
        assert a.raw == pytest.approx(b.raw, abs=1e-4)
        assert a.aggregate == pytest.approx(b.aggregate, abs=1e-4)


def test_async_client_matches_sync(server):
    async def go():
        async with AsyncRewardClient(server.url, max_items_per_request=4) as c:
            return await c.score(ITEMS, models=["a", "cls"]), await c.models(), await c.health()

    results, models, healthy = asyncio.run(go())
    with RewardClient(server.url) as c:
        sync = c.score(ITEMS, models=["a", "cls"])
    assert healthy and {m["name"] for m in models} == {"a", "b", "cls"}
    assert [r.aggregate for r in results] == pytest.approx([r.aggregate for r in sync], abs=1e-4)


def _public_methods(cls) -> dict[str, inspect.Signature]:
    return {
        n: inspect.signature(getattr(cls, n)) for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))
    }


def test_async_client_has_every_method_of_the_sync_one():
    sync, aio = _public_methods(RewardClient), _public_methods(AsyncRewardClient)
    assert sync.pop("close") and aio.pop("aclose")
    assert sync == aio  # same names, parameters and annotations
    assert all(inspect.iscoroutinefunction(getattr(AsyncRewardClient, n)) for n in aio)


def test_async_references_round_trip(server):
    async def go():
        async with AsyncRewardClient(server.url) as c:
            await c.put_references("a", [("async prompt", 0.25)], reference_set="async-set")
            got = await c.get_reference("a", "async prompt", reference_set="async-set")
            missing = await c.get_reference("a", "never stored", reference_set="async-set")
            fp = prompt_fingerprint("async prompt")
            looked = await c.lookup_references("a", [fp], reference_set="async-set")
            return got, missing, looked["references"][fp]

    got, missing, looked = asyncio.run(go())
    assert got["value"] == 0.25 and missing is None and looked["value"] == 0.25
    with RewardClient(server.url) as c:  # what the sync client reads back
        assert c.get_reference("a", "async prompt", reference_set="async-set") == got


def test_tuples_references_and_typed_errors(server):
    with RewardClient(server.url) as c:
        res = c.score([("hello", "hi")], models=["a"])
        assert res[0].p_all_good is None and res[0].id is None  # no real reference: no probability
        res = c.score([{"prompt": "hello", "response": "hi", "reference": {"a": 0.0}}], models=["a"])
        assert res[0].p_all_good is not None
        out = c.put_references("a", [("sdk prompt", 0.5)])
        assert out["fingerprints"] == [prompt_fingerprint("sdk prompt")]
        assert c.get_reference("a", "sdk prompt")["value"] == 0.5
        assert c.get_reference("a", "never stored") is None
        # another reference set: its own entry, not visible in the default set
        c.put_references("a", [("sdk prompt", -1.5)], reference_set="sdk-set")
        assert c.get_reference("a", "sdk prompt", reference_set="sdk-set")["value"] == -1.5
        assert c.get_reference("a", "sdk prompt")["value"] == 0.5
        fp = prompt_fingerprint("sdk prompt")
        assert c.lookup_references("a", [fp], reference_set="sdk-set")["references"][fp]["value"] == -1.5
        with pytest.raises(NotFoundError) as e:
            c.score(ITEMS, models=["nope"])
        assert e.value.status == 404 and e.value.type == "model_not_found"
        with pytest.raises(BadRequestError) as e:
            c.score([("p", "r")], models=["b"])  # no reference, policy error
        assert e.value.type == "missing_reference"


class _Flaky(BaseHTTPRequestHandler):
    """Answers per path: /v1/score fails with 503 (Retry-After) `fail` times, then succeeds."""

    state: dict = {}

    def log_message(self, *a):
        pass

    def do_POST(self):
        st = self.state
        st["hits"] = st.get("hits", 0) + 1
        length = int(self.headers.get("content-length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        st["auth"] = self.headers.get("authorization")
        if st["mode"] == "sleep":
            time.sleep(st["sleep"])
        if st["mode"] == "invalid":
            return self._send(422, {"error": {"type": "invalid_request", "message": "bad"}})
        if st["mode"] == "error":  # always the given (status, type), with Retry-After 0
            status, etype = st["error"]
            return self._send(status, {"error": {"type": etype, "message": "no"}}, {"Retry-After": "0"})
        if st["hits"] <= st.get("fail", 0):
            return self._send(
                st.get("status", 503), {"error": {"type": "overloaded", "message": "busy"}}, {"Retry-After": "0"}
            )
        results = [
            {
                "id": it.get("id"),
                "raw": {"m": 1.0},
                "reference": {"m": 0.0},
                "transformed": {"m": -0.3},
                "aggregate": -0.3,
                "truncated": {"m": False},
            }
            for it in body["items"]
        ]
        self._send(
            200, {"results": results, "aggregate_method": "lsc_sum", "models": {}, "usage": {"items": 1, "tokens": 1}}
        )

    def _send(self, status, obj, headers=None):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def flaky():
    _Flaky.state = {"mode": "ok"}
    srv = ThreadingHTTPServer(("127.0.0.1", free_port()), _Flaky)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", _Flaky.state
    srv.shutdown()


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_transient_failures_are_retried(flaky, status):
    url, st = flaky
    st.update(fail=2, status=status)
    with RewardClient(url, backoff_base=0.01, api_key="k-1") as c:
        assert c.score([("p", "r")])[0].aggregate == -0.3
    assert st["hits"] == 3 and st["auth"] == "Bearer k-1"


def test_async_client_retries_with_the_same_policy(flaky):
    url, st = flaky
    st.update(fail=2, status=503)

    async def go(**kw):
        async with AsyncRewardClient(url, backoff_base=0.01, api_key="k-2", **kw) as c:
            return await c.score([("p", "r")])

    assert asyncio.run(go())[0].aggregate == -0.3
    assert st["hits"] == 3 and st["auth"] == "Bearer k-2"
    st.update(hits=0, fail=100)
    with pytest.raises(OverloadedError):
        asyncio.run(go(max_retries=1, patience=0))
    assert st["hits"] == 2


def test_gives_up_after_max_retries(flaky):
    url, st = flaky
    st.update(fail=100)
    with RewardClient(url, backoff_base=0.01, max_retries=2, patience=0) as c, pytest.raises(OverloadedError):
        c.score([("p", "r")])
    assert st["hits"] == 3


def test_overload_is_retried_past_max_retries_until_patience_runs_out(flaky):
    url, st = flaky
    st.update(fail=6, status=503)  # more 503s than max_retries
    with RewardClient(url, backoff_base=0.01, max_retries=2, patience=30) as c:
        assert c.score([("p", "r")])[0].aggregate == -0.3
    assert st["hits"] == 7
    st.update(hits=0, fail=10**6)
    t0 = time.monotonic()
    with RewardClient(url, backoff_base=0.01, max_retries=2, patience=0.3) as c, pytest.raises(OverloadedError):
        c.score([("p", "r")])
    assert 0.3 <= time.monotonic() - t0 < 5 and st["hits"] > 3
    st.update(hits=0, fail=100, status=502)  # patience is for overload (429, 503) only
    with RewardClient(url, backoff_base=0.01, max_retries=2, patience=30) as c, pytest.raises(RewardServeError):
        c.score([("p", "r")])
    assert st["hits"] == 3


def test_input_errors_are_not_retried(flaky):
    url, st = flaky
    st.update(mode="invalid")
    with RewardClient(url, backoff_base=0.01) as c, pytest.raises(BadRequestError):
        c.score([("p", "r")])
    assert st["hits"] == 1


@pytest.mark.parametrize(
    "status, etype, cls, tries",
    [
        (503, "load_failed", ServiceUnavailableError, 1),  # a model failed to load: retrying cannot help
        (503, "not_ready", ServiceUnavailableError, 3),  # loading: later it may
        (503, "overloaded", OverloadedError, 3),
        (503, "reference_store_unavailable", ServiceUnavailableError, 3),
        (401, "unauthorized", AuthenticationError, 1),
        (403, "forbidden", PermissionDeniedError, 1),
        (404, "model_not_found", NotFoundError, 1),
        (422, "missing_reference", BadRequestError, 1),
        (413, "too_many_items", PayloadTooLargeError, 1),
        (500, "model_error", ServerError, 1),
        (502, "http_error", ServerError, 3),  # no known type (a proxy's answer): by status
    ],
)
def test_errors_are_typed_and_retried_by_their_type(flaky, status, etype, cls, tries):
    url, st = flaky
    st.update(mode="error", error=(status, etype))
    # patience=0: the count of tries is max_retries' alone (patience keeps an overloaded 429/503 going)
    with RewardClient(url, backoff_base=0.01, max_retries=2, patience=0) as c, pytest.raises(cls) as e:
        c.score([("p", "r")])
    assert type(e.value) is cls and (e.value.status, e.value.type) == (status, etype)
    assert st["hits"] == tries


def test_read_timeout_and_connection_errors(flaky):
    url, st = flaky
    st.update(mode="sleep", sleep=1.0)
    with RewardClient(url, read_timeout=0.2, max_retries=1, backoff_base=0.01) as c, pytest.raises(ConnectionFailed):
        c.score([("p", "r")])
    assert st["hits"] == 2  # a timeout is transient: retried once
    with RewardClient(f"http://127.0.0.1:{free_port()}", max_retries=1, backoff_base=0.01) as c:
        with pytest.raises(ConnectionFailed):
            c.score([("p", "r")])
        assert c.health() is False


def test_auth_error_is_typed(tiny, tmp_path, monkeypatch):
    from rewardserve.app import create_app

    from ..conftest import LiveServer, tiny_settings

    monkeypatch.setenv("REWARDSERVE_API_KEYS", "sdk-key-0123456789abcdef")
    with LiveServer(create_app(tiny_settings(tiny, tmp_path))) as srv:
        with RewardClient(srv.url) as c, pytest.raises(AuthenticationError):
            c.score([("p", "r")], models=["a"])
        with RewardClient(srv.url, api_key="sdk-key-0123456789abcdef") as c:
            assert len(c.score([("p", "r")], models=["a"])) == 1


def test_chunks_by_estimated_tokens_as_well_as_items(flaky):
    from rewardclient.client import CHARS_PER_TOKEN, chunk_by_tokens, estimate_tokens

    assert chunk_by_tokens([10, 10, 10, 10], max_items=3, max_tokens=100) == [(0, 3), (3, 4)]
    assert chunk_by_tokens([60, 50, 10, 200, 5], max_items=10, max_tokens=100) == [(0, 1), (1, 3), (3, 4), (4, 5)]
    assert chunk_by_tokens([], 3, 100) == []
    item = {"prompt": "x" * 4000, "response": "y" * 400}
    assert estimate_tokens(item) == 4400 // CHARS_PER_TOKEN + 1
    chat = {"prompt": [{"role": "user", "content": "x" * 400}], "response": "y" * 40}
    assert estimate_tokens(chat) == (400 + 8 + 40) // CHARS_PER_TOKEN + 1
    url, st = flaky
    sizes = []
    real_send = RewardClient._send

    def send(self, call):
        sizes.append(len(call.json["items"]))
        return real_send(self, call)

    items = [("p" * 4000, "r" * 4000)] * 20  # ~2000 tokens each
    try:
        RewardClient._send = send
        with RewardClient(url, max_tokens_per_request=9000, max_concurrency=2) as c:
            assert len(c.score(items)) == 20
    finally:
        RewardClient._send = real_send
    assert sizes == [4, 4, 4, 4, 4]
