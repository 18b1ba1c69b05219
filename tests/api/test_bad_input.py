"""Hand-written hostile input: every answer is the documented error body, never a 5xx."""

from __future__ import annotations

import json

import pytest


def _err(r, status):
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert set(body) == {"error"} and body["error"]["type"] and body["error"]["message"]
    return body["error"]


def _post_raw(client, data: bytes, ctype="application/json"):
    return client.post("/v1/score", content=data, headers={"content-type": ctype})


def test_invalid_utf8(client):
    _err(_post_raw(client, b'{"items": [{"prompt": "\xff\xfe", "response": "r"}]}'), 422)


def test_empty_strings_are_scored(client):
    r = client.post(
        "/v1/score",
        json={"items": [{"prompt": "", "response": ""}, {"prompt": [], "response": ""}], "models": ["a", "cls"]},
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 2


def test_one_megabyte_response(client):
    # over the default max_text_chars: a clear 413; under it, long texts are truncated and scored
    e = _err(
        client.post("/v1/score", json={"items": [{"prompt": "p", "response": "word " * 200_000}], "models": ["a"]}), 413
    )
    assert "max_text_chars" in e["message"]
    r = client.post("/v1/score", json={"items": [{"prompt": "p", "response": "word " * 39_000}], "models": ["a"]})
    assert r.status_code == 200 and r.json()["results"][0]["truncated"]["a"] is True


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers(client, bad):
    _err(
        _post_raw(client, f'{{"items": [{{"prompt": "p", "response": "r", "reference": {{"a": {bad}}}}}]}}'.encode()),
        422,
    )
    _err(
        _post_raw(
            client,
            f'{{"items": [{{"prompt": "p", "response": "r"}}], "models": ["a"], '
            f'"aggregate": {{"weights": {{"a": {bad}}}}}}}'.encode(),
        ),
        422,
    )
    r = client.post(
        "/v1/references",
        content=f'{{"model": "a", "entries": [{{"prompt": "p", "value": {bad}}}]}}'.encode(),
        headers={"content-type": "application/json"},
    )
    _err(r, 422)


def test_duplicate_ids_are_echoed_in_order(client):
    items = [{"id": "same", "prompt": "p", "response": f"r{i}"} for i in range(3)]
    r = client.post("/v1/score", json={"items": items, "models": ["a"]})
    assert r.status_code == 200 and [x["id"] for x in r.json()["results"]] == ["same"] * 3


def test_unknown_and_duplicate_models(client):
    _err(client.post("/v1/score", json={"items": [{"prompt": "p", "response": "r"}], "models": ["a", "zzz"]}), 404)
    r = client.post("/v1/score", json={"items": [{"prompt": "p", "response": "r"}], "models": ["a", "a"]})
    assert r.status_code == 200 and list(r.json()["models"]) == ["a"]
    _err(client.post("/v1/score", json={"items": [{"prompt": "p", "response": "r"}], "models": []}), 422)


def test_deeply_nested_json(client):
    deep = "[" * 100_000 + "]" * 100_000
    _err(_post_raw(client, f'{{"items": {deep}}}'.encode()), 422)
    _err(_post_raw(client, f'{{"items": [{{"prompt": {deep}, "response": "r"}}]}}'.encode()), 422)


def test_wrong_content_type_and_wrong_types(client):
    _err(_post_raw(client, b'{"items": [{"prompt": "p", "response": "r"}]}', "text/plain"), 422)
    _err(_post_raw(client, b"items=1", "application/x-www-form-urlencoded"), 422)
    _err(_post_raw(client, b"", "application/json"), 422)
    _err(_post_raw(client, json.dumps([1, 2]).encode()), 422)
    _err(client.post("/v1/score", json={"items": [{"prompt": [{"role": "user"}], "response": "r"}]}), 422)
    _err(client.post("/v1/score", json={"items": [{"prompt": "p", "response": 5}]}), 422)
    _err(client.post("/v1/score", json={"items": "not a list"}), 422)


def test_other_limits(server, client):
    lim = server.state.settings.limits
    many = [f"m{i}" for i in range(lim.max_models_per_request + 1)]
    e = _err(client.post("/v1/score", json={"items": [{"prompt": "p", "response": "r"}], "models": many}), 413)
    assert "max_models_per_request" in e["message"]
    entries = [{"prompt": f"p{i}", "value": 1.0} for i in range(lim.max_references_per_upload + 1)]
    e = _err(client.post("/v1/references", json={"model": "a", "entries": entries}), 413)
    assert "max_references_per_upload" in e["message"]
    _err(client.post("/v1/references", json={"model": "a", "entries": [{"prompt": "p"}]}), 422)
    _err(
        client.post("/v1/references", json={"model": "a", "entries": [{"prompt": "p", "value": 1, "samples": ["x"]}]}),
        422,
    )
    _err(client.post("/v1/references", json={"model": "a"}), 422)
    _err(client.get("/v1/references", params={"model": "a", "prompt_fingerprint": "short"}), 422)
    _err(client.get("/v1/references", params={"model": "zzz", "prompt_fingerprint": "0" * 64}), 404)
