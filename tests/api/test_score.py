"""POST /v1/score over real HTTP against a live uvicorn server with tiny real checkpoints."""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from rewardserve import lsc

ITEMS = [
    {"id": "x1", "prompt": "How do I boil an egg?", "response": "Put it in boiling water for nine minutes."},
    {"id": "x2", "prompt": [{"role": "user", "content": "hello"}], "response": "hi, how can I help?"},
]


def score(client, **body):
    return client.post("/v1/score", json=body)


def test_shape_order_and_default_models(client):
    r = score(client, items=[dict(it, reference={"b": 0.0}) for it in ITEMS])
    assert r.status_code == 200, r.text
    body = r.json()
    assert [res["id"] for res in body["results"]] == ["x1", "x2"]
    assert body["aggregate_method"] == "lsc_sum"
    assert set(body["models"]) == {"a", "cls"} | {"b"}
    assert all(body["models"][m]["revision"] for m in body["models"])
    assert body["usage"]["items"] == 2 and body["usage"]["tokens"] > 0
    for res in body["results"]:
        for key in ("raw", "reference", "transformed", "truncated"):
            assert set(res[key]) == {"a", "b", "cls"}
        assert all(math.isfinite(v) for v in res["raw"].values())


def test_transformed_and_aggregate_follow_the_math(client):
    items = [dict(it, reference={"a": 0.3, "b": -0.2}) for it in ITEMS]
    body = score(client, items=items, models=["a", "b"]).json()
    for res in body["results"]:
        for m, ref in (("a", 0.3), ("b", -0.2)):
            assert res["reference"][m] == ref
            assert res["transformed"][m] == pytest.approx(float(lsc.transform(res["raw"][m], ref)), abs=1e-12)
        s = res["transformed"]["a"] + res["transformed"]["b"]
        assert res["aggregate"] == pytest.approx(s, abs=1e-12)
        assert res["p_all_good"] == pytest.approx(math.exp(s), rel=1e-12)


def test_identity_transform_and_raw_sum(client):
    items = [dict(it, reference={"b": 0.0}) for it in ITEMS]
    body = score(
        client, items=items, models=["cls", "b"], aggregate={"method": "raw_sum", "weights": {"cls": 2.0}}
    ).json()
    for res in body["results"]:
        assert res["transformed"]["cls"] == res["raw"]["cls"]  # identity
        assert res["aggregate"] == pytest.approx(2.0 * res["raw"]["cls"] + res["raw"]["b"], abs=1e-12)
        assert res["p_all_good"] is None


def test_min_and_weighted_lsc_have_no_probability(client):
    items = [dict(it, reference={"b": 0.0}) for it in ITEMS]
    body = score(client, items=items, models=["a", "b"], aggregate={"method": "min"}).json()
    for res in body["results"]:
        assert res["aggregate"] == pytest.approx(min(res["transformed"].values()))
        assert res["p_all_good"] is None
    body = score(client, items=items, models=["a", "b"], aggregate={"method": "lsc_sum", "weights": {"a": 0.5}}).json()
    res = body["results"][0]
    assert res["aggregate"] == pytest.approx(0.5 * res["transformed"]["a"] + res["transformed"]["b"])
    assert res["p_all_good"] is None


def test_score_alias(client):
    a = client.post("/score", json={"items": ITEMS, "models": ["a"]}).json()
    b = client.post("/v1/score", json={"items": ITEMS, "models": ["a"]}).json()
    assert a == b


def test_reference_resolution_order(client):
    prompt = "a prompt only this test uses"
    item = {"prompt": prompt, "response": "an answer"}
    # 1. nothing stored: model a falls back to its default (0.0); model b (policy error) is a 422
    r = score(client, items=[item], models=["a"])
    assert r.json()["results"][0]["reference"]["a"] == 0.0
    r = score(client, items=[item], models=["b"])
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["type"] == "missing_reference" and "'b'" in err["message"]
    # 2. stored references are used
    up = client.post("/v1/references", json={"model": "a", "entries": [{"prompt": prompt, "value": 1.25}]})
    assert up.status_code == 200, up.text
    client.post("/v1/references", json={"model": "b", "entries": [{"prompt": prompt, "value": -0.5}]})
    res = score(client, items=[item], models=["a", "b"]).json()["results"][0]
    assert res["reference"] == {"a": 1.25, "b": -0.5}
    # 3. inline beats stored
    res = score(client, items=[dict(item, reference={"a": 9.0})], models=["a", "b"]).json()["results"][0]
    assert res["reference"] == {"a": 9.0, "b": -0.5}
    # GET by fingerprint
    from rewardclient import prompt_fingerprint

    g = client.get("/v1/references", params={"model": "a", "prompt_fingerprint": prompt_fingerprint(prompt)})
    assert g.status_code == 200 and g.json()["value"] == 1.25 and g.json()["revision"]
    g = client.get("/v1/references", params={"model": "a", "prompt_fingerprint": "0" * 64})
    assert g.status_code == 404 and g.json()["error"]["type"] == "reference_not_found"


def test_references_from_samples_store_their_quantile(client):
    prompt = "samples prompt"
    samples = ["one", "two two", "three three three", "four four four four", "five"]
    up = client.post(
        "/v1/references", json={"model": "a", "quantile": 0.85, "entries": [{"prompt": prompt, "samples": samples}]}
    )
    assert up.status_code == 200, up.text
    raws = score(client, items=[{"prompt": prompt, "response": s} for s in samples], models=["a"]).json()["results"]
    expected = lsc.quantile([r["raw"]["a"] for r in raws], 0.85)
    assert up.json()["values"][0] == pytest.approx(expected, abs=1e-4)
    res = score(client, items=[{"prompt": prompt, "response": "x"}], models=["a"]).json()["results"][0]
    assert res["reference"]["a"] == pytest.approx(expected, abs=1e-4)


def err(r, status, type_=None):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}
    assert body["error"]["message"]
    if type_:
        assert body["error"]["type"] == type_
    return body["error"]


def test_error_cases(client):
    err(score(client, items=ITEMS, models=["nope"]), 404, "model_not_found")
    err(score(client, items=[]), 422, "invalid_request")
    err(
        client.post(
            "/v1/score",
            content=b'{"items": [{"prompt": "p", "response": "r", "reference": {"a": NaN}}]}',
            headers={"content-type": "application/json"},
        ),
        422,
    )
    err(
        client.post(
            "/v1/score",
            content=b'{"items": [{"prompt": "p", "response": "r", "reference": {"a": Infinity}}]}',
            headers={"content-type": "application/json"},
        ),
        422,
    )
    err(score(client, items=ITEMS, aggregate={"method": "mean"}), 422, "invalid_request")
    e = err(score(client, items=ITEMS, models=["a"], aggregate={"weights": {"b": 1.0}}), 422, "invalid_request")
    assert "'b'" in e["message"]
    err(score(client, items=[{"prompt": "p"}]), 422)
    err(score(client, items=[{"prompt": 3, "response": "r"}]), 422)
    err(score(client, items=ITEMS, extra_field=1), 422)
    err(client.post("/v1/score", content=b"not json", headers={"content-type": "application/json"}), 422)
    err(client.get("/v1/nothing-here"), 404)
    err(client.get("/v1/score"), 405)
    err(score(client, items=[dict(ITEMS[0], reference={"zzz": 1.0})]), 422)


def test_limits_return_413(server, client):
    lim = server.state.settings.limits
    e = err(score(client, items=ITEMS * (lim.max_items_per_request // 2 + 1)), 413, "too_many_items")
    assert "max_items_per_request" in e["message"]
    e = err(score(client, items=[{"prompt": "p", "response": "x" * (lim.max_text_chars + 1)}]), 413, "text_too_long")
    e = err(
        client.post(
            "/v1/score",
            content=b"{" + b" " * (lim.max_body_bytes + 10) + b"}",
            headers={"content-type": "application/json"},
        ),
        413,
        "payload_too_large",
    )


def test_truncation_reported(client):
    long = " ".join(["word"] * 500)
    res = score(client, items=[{"prompt": "p", "response": long}, ITEMS[0]], models=["a", "cls"]).json()["results"]
    assert res[0]["truncated"] == {"a": True, "cls": True}
    assert res[1]["truncated"] == {"a": False, "cls": False}


def test_forty_concurrent_requests_answered_correctly_in_order(client, server):
    prompts = [f"question number {i} " + "filler " * (i % 7) for i in range(40)]
    bodies = [
        {
            "items": [
                {"id": f"{i}-{k}", "prompt": prompts[i], "response": "answer " * (k + 1), "reference": {"b": 0.0}}
                for k in range(1 + i % 4)
            ]
        }
        for i in range(40)
    ]
    # expected values: every item scored alone
    alone = {}
    for b in bodies:
        for it in b["items"]:
            alone[it["id"]] = score(client, items=[it]).json()["results"][0]["raw"]
    forwards_before = server.state.registry.backbones["enc"].batcher.forwards

    def post(b):
        with httpx.Client(base_url=server.url, timeout=60) as c:
            return c.post("/v1/score", json=b)

    with ThreadPoolExecutor(40) as ex:
        responses = list(ex.map(post, bodies))
    n_items = sum(len(b["items"]) for b in bodies)
    for b, r in zip(bodies, responses):
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["id"] for x in results] == [it["id"] for it in b["items"]]
        for x in results:
            for m, v in x["raw"].items():
                assert v == pytest.approx(alone[x["id"]][m], abs=1e-4)
    # requests were batched together: fewer forwards than items
    assert server.state.registry.backbones["enc"].batcher.forwards - forwards_before < n_items


def test_models_health_ready_metrics(client):
    models = client.get("/v1/models").json()["models"]
    by = {m["name"]: m for m in models}
    assert set(by) == {"a", "b", "cls"}
    for m in models:
        for k in (
            "kind",
            "source",
            "revision",
            "device",
            "dtype",
            "max_length",
            "transform",
            "default_reference",
            "missing_reference",
        ):
            assert k in m
    assert by["a"]["kind"] == "encoder_head" and by["cls"]["kind"] == "sequence_classifier"
    assert by["cls"]["transform"] == "identity" and by["b"]["missing_reference"] == "error"
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    score(client, items=ITEMS, models=["a"])
    text = client.get("/metrics").text
    for name in (
        "rewardserve_requests_total",
        "rewardserve_request_seconds_bucket",
        "rewardserve_batch_items_bucket",
        "rewardserve_batch_tokens_bucket",
        "rewardserve_queue_wait_seconds_bucket",
        "rewardserve_forward_seconds_bucket",
        "rewardserve_padding_ratio_bucket",
        "rewardserve_queue_tokens",
        "rewardserve_items_scored_total",
    ):
        assert name in text, name
    assert 'route="/v1/score",status="200"' in text
    assert 'rewardserve_items_scored_total{model="a"}' in text


def test_openapi_documents_the_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/v1/score", "/score", "/v1/models", "/v1/references", "/healthz", "/readyz", "/metrics"):
        assert p in paths


def test_server_timing_header_says_where_the_time_went(client):
    t0 = time.perf_counter()
    r = score(client, items=ITEMS, models=["a", "cls"])
    wall_ms = 1000 * (time.perf_counter() - t0)
    parts = dict(p.strip().split(";dur=") for p in r.headers["server-timing"].split(","))
    assert set(parts) == {"encode", "queue", "forward", "total"}
    ms = {k: float(v) for k, v in parts.items()}
    assert all(v >= 0 for v in ms.values()) and ms["forward"] > 0
    assert ms["encode"] + ms["queue"] + ms["forward"] <= ms["total"] + 0.05 <= wall_ms + 0.05


def test_reference_lookup_runs_while_the_items_are_scored(client, server, monkeypatch):
    """A slow reference store (a remote Redis, say) does not delay the forward: the lookup runs
    while the items wait for and run their forward. And when the lookup fails, nothing of the
    request stays queued."""
    import asyncio

    scorer = server.state.scorer
    real = scorer.store.get_many
    events: dict[str, float] = {}

    async def slow_get_many(model, fingerprints, *rest):
        await asyncio.sleep(0.3)
        events.setdefault("lookup_done", time.perf_counter())
        return await real(model, fingerprints, *rest)

    encoder = server.state.registry.backbones["enc"].backend.encoder

    def on_forward(*_):
        events.setdefault("forward_start", time.perf_counter())

    hook = encoder.register_forward_pre_hook(on_forward)
    monkeypatch.setattr(scorer.store, "get_many", slow_get_many)
    try:
        r = score(client, items=[{"prompt": "overlap test", "response": "fine"}], models=["a"])
        assert r.status_code == 200, r.text
        assert events["forward_start"] < events["lookup_done"]
        # a lookup that fails (policy 'error', nothing stored) fails the request; the queue is left empty
        r = score(client, items=[{"prompt": "overlap test, no reference", "response": "fine"}], models=["b"])
        assert r.status_code == 422 and r.json()["error"]["type"] == "missing_reference"
        assert server.state.registry.backbones["enc"].batcher.queued_items == 0
    finally:
        hook.remove()
