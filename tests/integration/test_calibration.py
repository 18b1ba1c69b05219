"""Calibration against a live service: references stored, resumable, and used by the math."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from rewardclient import prompt_fingerprint
from rewardlab import tiny_models
from rewardlab.calibration import CalibrationConfig, calibrate
from rewardlab.datasets import load_prompts
from rewardserve import lsc
from rewardserve.app import create_app

from ..conftest import SHARED_DATA, LiveServer, tiny_settings

PROMPTS = SHARED_DATA / "prompts.jsonl.gz"


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return str(tiny_models.make_causal_lm(tmp_path_factory.mktemp("policy") / "lm", seed=7))


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_calibrate_stores_quantiles_that_drive_the_transform(store, policy, tiny, tmp_path, request):
    url = f"sqlite:///{tmp_path / 'r.db'}" if store == "sqlite" else request.getfixturevalue("fresh_redis_url")
    settings = tiny_settings(tiny, tmp_path, references={"store": url})
    with LiveServer(create_app(settings)) as srv:
        cfg = CalibrationConfig(
            prompts=str(PROMPTS),
            url=srv.url,
            policy=policy,
            samples=4,
            quantile=0.85,
            models=["a", "b"],
            max_new_tokens=8,
            limit=5,
            split="test",
            log=str(tmp_path / "log.jsonl"),
            batch_prompts=2,
        )
        report = calibrate(cfg)
        assert report.calibrated == 5 and report.skipped == 0 and report.samples == 20
        rows = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
        assert len(rows) == 5 and all(len(r["raw"]["a"]) == 4 for r in rows)
        prompts = load_prompts(PROMPTS, split="test", limit=5)
        c = httpx.Client(base_url=srv.url)
        for p, row in zip(prompts, rows):
            assert row["fingerprint"] == prompt_fingerprint(p)
            for m in ("a", "b"):
                ref = c.get("/v1/references", params={"model": m, "prompt_fingerprint": row["fingerprint"]}).json()
                assert ref["value"] == pytest.approx(lsc.quantile(row["raw"][m], 0.85), abs=1e-12)
                assert ref["n_samples"] == 4 and ref["quantile"] == 0.85 and ref["policy"] == policy
            # the transformed score uses exactly that reference
            res = c.post(
                "/v1/score", json={"items": [{"prompt": p, "response": "a new reply"}], "models": ["a", "b"]}
            ).json()["results"][0]
            for m in ("a", "b"):
                expected_ref = lsc.quantile(row["raw"][m], 0.85)
                assert res["reference"][m] == pytest.approx(expected_ref, abs=1e-12)
                assert res["transformed"][m] == pytest.approx(
                    float(lsc.transform(res["raw"][m], expected_ref)), abs=1e-12
                )
        # the default reference: the 0.85-quantile over all 20 samples, used for unseen prompts
        pooled = {m: [v for r in rows for v in r["raw"][m]] for m in ("a", "b")}
        for m in ("a", "b"):
            assert report.defaults[m] == pytest.approx(lsc.quantile(pooled[m], 0.85))
        res = c.post(
            "/v1/score", json={"items": [{"prompt": "never calibrated", "response": "x"}], "models": ["a", "b"]}
        )
        assert res.status_code == 422  # model b's policy is 'error': a stored default does not override it
        res = c.post(
            "/v1/score", json={"items": [{"prompt": "never calibrated", "response": "x"}], "models": ["a"]}
        ).json()
        assert res["results"][0]["reference"]["a"] == pytest.approx(report.defaults["a"])
        # resumable: a second run skips every prompt
        again = calibrate(cfg)
        assert again.calibrated == 0 and again.skipped == 5
        # a different K is a different calibration
        assert calibrate(CalibrationConfig(**{**cfg.__dict__, "samples": 2, "limit": 2})).calibrated == 2


def test_reference_response_mode(tiny, tmp_path):
    settings = tiny_settings(tiny, tmp_path)
    with LiveServer(create_app(settings)) as srv:
        refusal = "I can't help with that."
        report = calibrate(
            CalibrationConfig(
                prompts=str(PROMPTS),
                url=srv.url,
                reference_response=refusal,
                models=["a"],
                limit=3,
                log=str(tmp_path / "l.jsonl"),
            )
        )
        assert report.calibrated == 3
        p = load_prompts(PROMPTS, limit=3)[1]
        c = httpx.Client(base_url=srv.url)
        raw_refusal = c.post("/v1/score", json={"items": [{"prompt": p, "response": refusal}], "models": ["a"]}).json()[
            "results"
        ][0]["raw"]["a"]
        res = c.post("/v1/score", json={"items": [{"prompt": p, "response": refusal}], "models": ["a"]}).json()[
            "results"
        ][0]
        assert res["reference"]["a"] == pytest.approx(raw_refusal, abs=1e-5)
        assert res["transformed"]["a"] == pytest.approx(float(lsc.transform(0.0, 0.0)), abs=1e-4)  # log σ(0)


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_two_calibrations_into_two_sets_do_not_touch_each_other(store, policy, tiny, tmp_path, request):
    url = f"sqlite:///{tmp_path / 'r.db'}" if store == "sqlite" else request.getfixturevalue("fresh_redis_url")
    settings = tiny_settings(tiny, tmp_path, references={"store": url})
    with LiveServer(create_app(settings)) as srv:
        c = httpx.Client(base_url=srv.url)
        common = dict(prompts=str(PROMPTS), url=srv.url, models=["a"], limit=3, split="test")
        ra = calibrate(
            CalibrationConfig(
                **common,
                policy=policy,
                samples=3,
                max_new_tokens=6,
                reference_set="base-a",
                log=str(tmp_path / "a.jsonl"),
            )
        )
        set_a = c.get("/v1/reference-sets/base-a/references").json()["references"]
        rb = calibrate(
            CalibrationConfig(
                **common,
                reference_response="I can't help with that.",
                reference_set="base-b",
                log=str(tmp_path / "b.jsonl"),
            )
        )
        assert ra.calibrated == rb.calibrated == 3
        assert c.get("/v1/reference-sets/base-a/references").json()["references"] == set_a  # b left a as it was
        listed = {s["name"]: s for s in c.get("/v1/reference-sets").json()["reference_sets"]}
        assert listed["base-a"]["models"] == listed["base-b"]["models"] == {"a": 4}  # 3 prompts + the set's default
        assert "default" not in listed
        rows_a = [json.loads(line) for line in open(tmp_path / "a.jsonl")]
        rows_b = [json.loads(line) for line in open(tmp_path / "b.jsonl")]
        for p, row_a, row_b in zip(load_prompts(PROMPTS, split="test", limit=3), rows_a, rows_b):
            ref_a, ref_b = lsc.quantile(row_a["raw"]["a"], 0.85), row_b["raw"]["a"][0]
            assert ref_a != ref_b
            for rset, expected in (("base-a", ref_a), ("base-b", ref_b)):
                body = {"items": [{"prompt": p, "response": "x"}], "models": ["a"], "reference_set": rset}
                out = c.post("/v1/score", json=body).json()
                res = out["results"][0]
                assert out["reference_set"] == rset
                assert res["reference"]["a"] == pytest.approx(expected, abs=1e-12) and res["reference_source"] == {
                    "a": "stored"
                }
                assert res["p_all_good"] == pytest.approx(math.exp(res["aggregate"]))
            res = c.post("/v1/score", json={"items": [{"prompt": p, "response": "x"}], "models": ["a"]}).json()[
                "results"
            ][0]
            assert res["reference_source"] == {"a": "config_default"} and res["p_all_good"] is None
        # a prompt never calibrated: each set's own default
        for rset, report in (("base-a", ra), ("base-b", rb)):
            body = {"items": [{"prompt": "never calibrated", "response": "x"}], "models": ["a"], "reference_set": rset}
            res = c.post("/v1/score", json=body).json()["results"][0]
            assert res["reference"]["a"] == pytest.approx(report.defaults["a"]) and res["reference_source"] == {
                "a": "set_default"
            }
            assert res["p_all_good"] is None
