"""The TRL adapter inside a real GRPOTrainer, and OpenRLHF's exact payload, against live services."""

from __future__ import annotations

import json

import httpx
import pytest

from rewardclient.trl import RewardServeReward
from rewardlab import tiny_models
from rewardlab.trainer import RLHFConfig, run_rlhf

from ..conftest import SHARED_DATA


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return str(tiny_models.make_causal_lm(tmp_path_factory.mktemp("policy") / "lm", seed=11))


def test_trl_adapter_calling_convention(server):
    fn = RewardServeReward(server.url, models=["a", "cls"])
    logged = {}
    # conversational, as GRPOTrainer passes it, with an extra dataset column
    prompts = [[{"role": "user", "content": "hello"}]] * 2
    completions = [[{"role": "assistant", "content": "hi there"}], [{"role": "assistant", "content": "go away"}]]
    r = fn(
        prompts=prompts,
        completions=completions,
        completion_ids=[[1], [2]],
        trainer_state=None,
        log_metric=lambda k, v: logged.__setitem__(k, v),
        some_column=["x", "y"],
    )
    assert len(r) == 2 and all(isinstance(x, float) for x in r)
    direct = httpx.post(
        f"{server.url}/v1/score",
        json={
            "items": [{"prompt": prompts[0], "response": "hi there"}, {"prompt": prompts[1], "response": "go away"}],
            "models": ["a", "cls"],
        },
    ).json()
    assert r == pytest.approx([x["aggregate"] for x in direct["results"]])
    assert {"rewardserve/a/raw", "rewardserve/a/transformed", "rewardserve/cls/raw", "rewardserve/aggregate"} <= set(
        logged
    )
    # plain prompts, one model's raw value
    fn = RewardServeReward(server.url, output="raw", model="cls", models=["cls"])
    r = fn(prompts=["hello", "hello"], completions=["hi there", "go away"])
    plain = httpx.post(
        f"{server.url}/v1/score",
        json={
            "items": [{"prompt": "hello", "response": "hi there"}, {"prompt": "hello", "response": "go away"}],
            "models": ["cls"],
        },
    ).json()
    assert r == pytest.approx([x["raw"]["cls"] for x in plain["results"]], abs=1e-6)
    with pytest.raises(ValueError):
        RewardServeReward(server.url, output="raw")


def test_grpo_trainer_runs_two_steps_against_the_service(server, policy, tmp_path):
    cfg = RLHFConfig(
        url=server.url,
        policy=policy,
        prompts=str(SHARED_DATA / "prompts.jsonl.gz"),
        max_prompts=8,
        models=["a", "cls"],
        steps=2,
        prompts_per_step=2,
        num_generations=2,
        max_completion_length=8,
        out_dir=str(tmp_path / "run"),
        sample_prompts=1,
        eval_prompts=2,
        eval_samples=2,
    )
    summary = run_rlhf(cfg)
    out = tmp_path / "run"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        for k in (
            "rewardserve/a/raw",
            "rewardserve/a/transformed",
            "rewardserve/cls/raw",
            "rewardserve/aggregate",
            "kl",
            "rewardserve/seconds",
            "rewardserve/items_per_s",
            "completions/mean_length",
        ):
            assert k in r, k
    for f in ("config.json", "report.md", "rewards.png", "kl.png", "length.png"):
        assert (out / f).stat().st_size > 0
    assert json.loads((out / "config.json").read_text())["beta"] > 0
    assert summary["steps"] == 2
    # the same evaluation prompts before and after training, with the paired difference and its interval
    ev = summary["eval"]
    assert (ev["prompts"], ev["samples_per_prompt"]) == (2, 2)
    per_prompt = [[sum(s) / len(s) for s in ev[k]] for k in ("scores_before", "scores_after")]
    assert ev["difference"]["mean"] == pytest.approx(sum(a - b for b, a in zip(*per_prompt)) / 2)
    for k in ("before", "after", "difference"):
        assert ev[k]["lo"] <= ev[k]["mean"] <= ev[k]["hi"]
    report = (out / "report.md").read_text()
    assert "on the same prompts, before and after training" in report and "Training batches" in report
    with pytest.raises(ValueError, match="beta"):
        run_rlhf(RLHFConfig(url=server.url, policy=policy, beta=0.0, out_dir=str(tmp_path / "bad")))


def test_openrlhf_get_reward_payload(client):
    prompts = ["<|user|>How do I boil an egg?<|assistant|>", "Human: hi\n\nAssistant:"]
    responses = [" Simmer it for nine minutes.", " Hello! How can I help?"]
    payload = {"query": [p + r for p, r in zip(prompts, responses)], "prompts": prompts, "labels": ["", ""]}
    r = client.post("/get_reward", json=payload)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"rewards", "scores", "extra_logs"}
    direct = client.post(
        "/v1/score",
        json={
            "items": [{"prompt": p, "response": x, "reference": {"b": 0.0}} for p, x in zip(prompts, responses)],
            "models": ["a", "cls"],
        },
    ).json()
    assert body["rewards"] == pytest.approx([x["aggregate"] for x in direct["results"]], abs=1e-6)
    assert body["extra_logs"]["a/raw"] == pytest.approx([x["raw"]["a"] for x in direct["results"]], abs=1e-6)
    bad = dict(payload, query=["something else entirely", payload["query"][1]])
    r = client.post("/get_reward", json=bad)
    assert r.status_code == 422 and "query[0]" in r.json()["error"]["message"]
