"""Reference sets and reference sources over real HTTP (raw httpx) against a live server."""

from __future__ import annotations

import json
import math
import re

import httpx
import pytest

from rewardclient import prompt_fingerprint
from rewardserve import lsc
from rewardserve.app import create_app

from ..conftest import LiveServer, tiny_settings


@pytest.fixture(scope="module")
def srv(tiny, tmp_path_factory):
    settings = tiny_settings(
        tiny, tmp_path_factory.mktemp("sets"), openrlhf={"models": ["a"], "reference_set": "rlhf-base"}
    )
    with LiveServer(create_app(settings)) as s:
        yield s


@pytest.fixture
def c(srv):
    with httpx.Client(base_url=srv.url, timeout=60) as client:
        yield client


def fallbacks(c) -> dict[tuple[str, str], float]:
    text = c.get("/metrics").text
    return {
        (m, s): float(v)
        for m, s, v in re.findall(
            r'^rewardserve_reference_fallbacks_total\{model="([^"]+)",source="([^"]+)"\} (\S+)$', text, re.M
        )
    }


def put(c, model, entries, rset=None, default=None):
    body = {"model": model, "entries": [{"prompt": p, "value": v} for p, v in entries]}
    if rset:
        body["reference_set"] = rset
    if default is not None:
        body["default"] = {"value": default}
    r = c.post("/v1/references", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_same_prompt_in_two_sets_and_every_source(c):
    p = "sets: same prompt"
    assert put(c, "a", [(p, 1.0)])["reference_set"] == "default"
    put(c, "a", [(p, -3.0)], rset="exp-b", default=0.75)
    put(c, "b", [(p, 2.0)], rset="exp-b")
    before = fallbacks(c)
    item = {"prompt": p, "response": "r"}
    unseen = {"prompt": "sets: nothing stored for this one", "response": "r"}
    body = {"items": [item, unseen, dict(unseen, reference={"a": 0.5})], "models": ["a"], "reference_set": "exp-b"}
    out = c.post("/v1/score", json=body).json()
    assert out["reference_set"] == "exp-b"
    r0, r1, r2 = out["results"]
    assert (r0["reference"], r0["reference_source"]) == ({"a": -3.0}, {"a": "stored"})
    assert (r1["reference"], r1["reference_source"]) == ({"a": 0.75}, {"a": "set_default"})
    assert (r2["reference"], r2["reference_source"]) == ({"a": 0.5}, {"a": "inline"})
    for res in (r0, r2):  # a probability only against real references
        assert res["p_all_good"] == pytest.approx(math.exp(res["transformed"]["a"]), rel=1e-12)
        assert res["transformed"]["a"] == pytest.approx(
            float(lsc.transform(res["raw"]["a"], res["reference"]["a"])), abs=1e-12
        )
    assert r1["p_all_good"] is None and r1["aggregate"] == r1["transformed"]["a"]
    # the default set: its own entry for the prompt, and the model's configured default elsewhere
    out = c.post(
        "/v1/score",
        json={
            "items": [item, unseen],
            "models": ["a", "b", "cls"],
            "reference_set": "default",
            "aggregate": {"method": "raw_sum"},
        }
        | {"items": [dict(item, reference={"b": 0.0}), dict(unseen, reference={"b": 0.0})]},
    ).json()
    d0, d1 = out["results"]
    assert d0["reference"]["a"] == 1.0 and d0["reference_source"] == {
        "a": "stored",
        "b": "inline",
        "cls": "config_default",
    }
    assert d1["reference_source"] == {"a": "config_default", "b": "inline", "cls": "config_default"}
    # model b in exp-b: stored there; with both LSC models stored the item has a probability
    res = c.post("/v1/score", json={"items": [item], "models": ["a", "b"], "reference_set": "exp-b"}).json()["results"][
        0
    ]
    assert res["reference_source"] == {"a": "stored", "b": "stored"}
    assert res["p_all_good"] == pytest.approx(math.exp(res["transformed"]["a"] + res["transformed"]["b"]), rel=1e-12)
    # the fallback counter: per model and source, LSC models only (cls is identity: no reference used)
    after = fallbacks(c)
    grew = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
    assert grew == {("a", "set_default"): 1, ("a", "config_default"): 1}


def test_missing_reference_error_on_request(c):
    p = "sets: error policy prompt"
    put(c, "a", [(p, 0.1)], rset="strict", default=0.3)
    ok = c.post(
        "/v1/score",
        json={
            "items": [{"prompt": p, "response": "r"}],
            "models": ["a"],
            "reference_set": "strict",
            "missing_reference": "error",
        },
    )
    assert ok.status_code == 200 and ok.json()["results"][0]["reference_source"] == {"a": "stored"}
    r = c.post(
        "/v1/score",
        json={
            "items": [{"prompt": p, "response": "r"}, {"prompt": "sets: other", "response": "r"}],
            "models": ["a", "cls"],
            "reference_set": "strict",
            "missing_reference": "error",
        },
    )
    assert r.status_code == 422, r.text
    e = r.json()["error"]
    assert e["type"] == "missing_reference" and "items[1]" in e["message"] and "'strict'" in e["message"]
    assert "request's missing_reference" in e["message"]
    r = c.post("/v1/score", json={"items": [{"prompt": p, "response": "r"}], "missing_reference": "default"})
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_request"


def test_lookup_get_list_export_import_delete(c):
    p = "sets: lifecycle prompt"
    fp = prompt_fingerprint(p)
    put(c, "a", [(p, 4.0)], rset="life", default=-1.0)
    put(c, "b", [(p, 5.0)], rset="life")
    g = c.get("/v1/references", params={"model": "a", "prompt_fingerprint": fp, "reference_set": "life"})
    assert g.status_code == 200 and g.json()["value"] == 4.0 and g.json()["reference_set"] == "life"
    g = c.get("/v1/references", params={"model": "a", "prompt_fingerprint": fp})
    assert g.status_code == 404 and "'default'" in g.json()["error"]["message"]
    lk = c.post(
        "/v1/references/lookup", json={"model": "a", "prompt_fingerprints": [fp], "reference_set": "life"}
    ).json()
    assert lk["reference_set"] == "life" and lk["references"][fp]["value"] == 4.0 and lk["default"]["value"] == -1.0
    assert (
        c.post("/v1/references/lookup", json={"model": "a", "prompt_fingerprints": [fp]}).json()["references"][fp]
        is None
    )
    listed = {s["name"]: s for s in c.get("/v1/reference-sets").json()["reference_sets"]}
    assert listed["life"] == {"name": "life", "models": {"a": 2, "b": 1}, "references": 3}
    export = c.get("/v1/reference-sets/life/references").json()
    assert export["reference_set"] == "life"
    assert sorted((r["model"], r["prompt_fingerprint"], r["value"]) for r in export["references"]) == sorted(
        [("a", "default", -1.0), ("a", fp, 4.0), ("b", fp, 5.0)]
    )
    # import the export as another set: every field kept
    imp = c.post("/v1/reference-sets/life-copy/references", json=export)
    assert imp.status_code == 200 and imp.json() == {"reference_set": "life-copy", "imported": 3}
    copy = c.get("/v1/reference-sets/life-copy/references").json()
    assert copy["references"] == export["references"] and copy["reference_set"] == "life-copy"
    r = c.post("/v1/reference-sets/x/references", json={"references": [dict(export["references"][0], model="zzz")]})
    assert r.status_code == 404 and r.json()["error"]["type"] == "model_not_found"
    # delete: gone from that set only
    d = c.delete("/v1/reference-sets/life")
    assert d.status_code == 200 and d.json() == {"reference_set": "life", "deleted": 3}
    assert c.delete("/v1/reference-sets/life").status_code == 404
    assert c.get("/v1/reference-sets/life/references").json()["error"]["type"] == "reference_set_not_found"
    names = [s["name"] for s in c.get("/v1/reference-sets").json()["reference_sets"]]
    assert "life" not in names and "life-copy" in names
    res = c.post(
        "/v1/score", json={"items": [{"prompt": p, "response": "r"}], "models": ["a"], "reference_set": "life-copy"}
    ).json()
    assert res["results"][0]["reference"] == {"a": 4.0}


@pytest.mark.parametrize("bad", ["", "a b", "x" * 65, "a:b", "../etc", "-x", "é"])
def test_invalid_set_names_are_422_everywhere(c, bad):
    def check(r):
        assert r.status_code == 422, (r.status_code, r.text)
        e = r.json()["error"]
        assert e["type"] == "invalid_request" and "reference set name" in e["message"], e
        return e

    item = {"prompt": "p", "response": "r"}
    e = check(c.post("/v1/score", json={"items": [item], "models": ["a"], "reference_set": bad}))
    assert "reference_set" in e["message"]
    check(c.post("/v1/references", json={"model": "a", "entries": [{"prompt": "p", "value": 1}], "reference_set": bad}))
    check(c.post("/v1/references/lookup", json={"model": "a", "prompt_fingerprints": ["0" * 64], "reference_set": bad}))
    check(c.get("/v1/references", params={"model": "a", "prompt_fingerprint": "0" * 64, "reference_set": bad}))
    check(c.post("/get_reward", json={"query": ["p r"], "prompts": ["p"]}, headers={"X-Reference-Set": bad.encode()}))
    if bad and "/" not in bad:  # a path segment
        check(c.delete(f"/v1/reference-sets/{bad}"))
        check(c.get(f"/v1/reference-sets/{bad}/references"))


def test_get_reward_reads_the_configured_set_and_the_header(c):
    p = "sets: openrlhf prompt "
    put(c, "a", [(p, 2.5)], rset="rlhf-base")
    put(c, "a", [(p, -2.5)], rset="other")
    body = {"query": [p + "a reply"], "prompts": [p]}
    raw = c.post("/v1/score", json={"items": [{"prompt": p, "response": "a reply"}], "models": ["a"]}).json()[
        "results"
    ][0]["raw"]["a"]
    for headers, ref in (({}, 2.5), ({"X-Reference-Set": "other"}, -2.5)):
        out = c.post("/get_reward", json=body, headers=headers).json()
        assert out["rewards"][0] == pytest.approx(float(lsc.transform(raw, ref)), abs=1e-5)


def test_a_large_set_is_exported_as_a_stream_and_imports_back(c):
    """An export of more entries than a page of the store is streamed (chunked, no Content-Length:
    the service never builds the whole answer) and is the same document: it imports into another set."""
    from rewardserve.references.base import PAGE_ROWS

    n = PAGE_ROWS + 11
    put(c, "a", [(f"sets: stream {i}", i / 3) for i in range(n)], rset="big", default=0.5)
    with c.stream("GET", "/v1/reference-sets/big/references") as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert "content-length" not in r.headers and r.headers["transfer-encoding"] == "chunked"
        export = json.loads(r.read())
    assert export["reference_set"] == "big" and len(export["references"]) == n + 1
    rows = export["references"]
    assert [(x["model"], x["prompt_fingerprint"]) for x in rows] == sorted(
        (x["model"], x["prompt_fingerprint"]) for x in rows
    )
    assert sorted(x["value"] for x in rows) == sorted([0.5, *(i / 3 for i in range(n))])
    assert set(rows[0]) == {
        "model",
        "prompt_fingerprint",
        "value",
        "revision",
        "quantile",
        "n_samples",
        "policy",
        "updated_at",
    }
    imp = c.post("/v1/reference-sets/big-copy/references", json=export)
    assert imp.status_code == 200 and imp.json()["imported"] == n + 1
    assert c.get("/v1/reference-sets/big-copy/references").json()["references"] == rows
    for name in ("big", "big-copy"):
        assert c.delete(f"/v1/reference-sets/{name}").status_code == 200
