"""Every kind of reward in one request, over real HTTP: a math check, a regex check, a user function
that hangs (a timeout), a check with ``missing_label: skip``, a tiny generative judge and a reward
model on a live server. Labels sent by each trainer adapter reach the checks; missing labels are
422s; p_all_good follows the rules; ``/v1/models`` says what each model needs; the check metrics
are exported; the judge's P(Yes) through the service equals the in-process computation."""

from __future__ import annotations

import asyncio
import logging
import math

import httpx
import pytest

from rewardclient import RewardClient
from rewardclient.trl import RewardServeReward
from rewardlab import tiny_models
from rewardserve.app import create_app
from rewardserve.config import Settings
from tests.chat_templates import make_tokenizer
from tests.client.trainer_calls import SlimeRemoteRM, VerlItem, verl_load_reward_fn, verl_reward_loop
from tests.conftest import LiveServer
from tests.integration.test_judge import JUDGE_SPECS, YES_NO_CORPUS, reference

SECRET = "4"  # a label; never in an answer's warnings or the logs as a label
QUESTION = "Is the reply polite?"
TOL = 1e-4
PROMPT = [{"role": "user", "content": "What is 2 + 2? Put the answer in \\boxed{}."}]
RIGHT, WRONG = "It is \\boxed{4}.", "It is \\boxed{5}."
ALL = ["correct", "fmt", "polite", "a"]


@pytest.fixture(scope="module")
def judge_lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds_judge")
    tok = make_tokenizer(JUDGE_SPECS["smollm2"], root / "tok", corpus=YES_NO_CORPUS)
    return tiny_models.make_causal_lm_for_tokenizer(tok, root / "lm", seed=10, initializer_range=0.4)


@pytest.fixture(scope="module")
def srv(tiny, judge_lm, tmp_path_factory):
    settings = Settings(
        references={"store": f"sqlite:///{tmp_path_factory.mktemp('kinds') / 'refs.db'}"},
        batching={"max_wait_ms": 2},
        openrlhf={"models": ["correct"], "method": "raw_sum"},
        slime={"models": ["correct"], "method": "raw_sum"},
        backbones={
            "checks": {
                "kind": "verifier",
                "workers": 2,
                "timeout_s": 1.0,
                "models": {
                    "correct": {"verifier": "math"},
                    "fmt": {"verifier": "regex", "pattern": r"\\boxed\{[^{}]+\}", "epsilon": 0.01},
                    "opt": {"verifier": "exact_match", "missing_label": "skip"},
                    "slow": {"verifier": "tests.verifier_functions:sleeps", "needs_label": False},
                },
            },
            "judges": {
                "kind": "judge",
                "path": str(judge_lm),
                "max_length": 256,
                "models": {"polite": {"question": QUESTION}},
            },
            "enc": {
                "kind": "encoder_head",
                "path": str(tiny["encoder"]),
                "max_length": 64,
                "models": {"a": {"head": str(tiny["head_a"])}},
            },
        },
    )
    with LiveServer(create_app(settings)) as s:
        yield s


def score(srv, items, models=ALL, **body):
    return httpx.post(f"{srv.url}/v1/score", json={"items": items, "models": models, **body}, timeout=60)


def test_mixed_kinds_in_one_request(srv, judge_lm, caplog):
    caplog.set_level(logging.DEBUG)
    items = [
        {"prompt": PROMPT, "response": RIGHT, "label": SECRET, "reference": {"a": 0.0}},
        {"prompt": PROMPT, "response": WRONG, "label": SECRET, "reference": {"a": 0.0}},
        {"prompt": PROMPT, "response": "four", "label": SECRET},
    ]
    r = score(srv, items)
    assert r.status_code == 200, r.text
    right, wrong, plain = r.json()["results"]
    assert (right["raw"]["correct"], wrong["raw"]["correct"], plain["raw"]["correct"]) == (1.0, 0.0, 0.0)
    assert (right["raw"]["fmt"], plain["raw"]["fmt"]) == (1.0, 0.0)
    assert wrong["transformed"]["correct"] == pytest.approx(math.log(1e-3))
    assert plain["transformed"]["fmt"] == pytest.approx(math.log(0.01))
    for res in (right, wrong, plain):
        assert res["reference_source"]["correct"] == "not_applicable" and res["reference"]["correct"] == 0.0
        assert res["reference_source"]["polite"] == "config_default"
        assert res["aggregate"] == pytest.approx(sum(res["transformed"].values()), abs=1e-9)
    # the judge: P(Yes) through the service = the in-process full-vocabulary computation
    for res, item in ((right, items[0]), (wrong, items[1])):
        p_yes, raw = reference(judge_lm, PROMPT, item["response"], question=QUESTION)
        assert res["raw"]["polite"] == pytest.approx(raw, abs=TOL)
        assert math.exp(res["transformed"]["polite"]) == pytest.approx(p_yes, abs=TOL)
    # p_all_good: checks, a judge at reference 0 and a reward model with an inline reference are all
    # real probabilities; a reward model on its config default is not
    assert right["p_all_good"] == pytest.approx(math.exp(right["aggregate"]))
    assert wrong["p_all_good"] < 1e-3 and plain["p_all_good"] is None
    raw_sum = score(srv, items[:2], aggregate={"method": "raw_sum"}).json()["results"]
    assert raw_sum[0]["aggregate"] == pytest.approx(sum(right["raw"].values()), abs=1e-6)
    assert all(x["p_all_good"] is None for x in raw_sum)
    assert SECRET not in str(right.get("warnings")) and "label" not in r.text.replace("missing_label", "")


def test_missing_labels_are_422_naming_the_item_and_the_model(srv):
    items = [{"prompt": "p", "response": RIGHT, "label": SECRET}, {"prompt": "p", "response": RIGHT}]
    r = score(srv, items, models=["a", "correct"])
    assert r.status_code == 422 and r.json()["error"]["type"] == "missing_label"
    msg = r.json()["error"]["message"]
    assert "items[1]" in msg and "'correct'" in msg
    with RewardClient(srv.url) as c, pytest.raises(Exception, match="missing_label|items\\[1\\]"):
        c.score(items, models=["correct"])
    # checks that need no label (regex) and reward models take unlabelled items
    assert score(srv, items, models=["fmt", "a"]).status_code == 200


def test_missing_label_skip(srv):
    items = [
        {"prompt": "p", "response": "Paris", "label": "paris", "reference": {"a": 0.0}},
        {"prompt": "p", "response": "Paris", "reference": {"a": 0.0}},
    ]
    r = score(srv, items, models=["opt", "fmt", "a"])
    assert r.status_code == 200, r.text
    labelled, unlabelled = r.json()["results"]
    assert labelled["raw"]["opt"] == 1.0 and labelled["p_all_good"] is not None
    assert set(unlabelled["raw"]) == {"opt", "fmt", "a"}
    assert unlabelled["raw"]["opt"] is None and unlabelled["transformed"]["opt"] is None
    assert unlabelled["aggregate"] == pytest.approx(unlabelled["transformed"]["fmt"] + unlabelled["transformed"]["a"])
    assert unlabelled["p_all_good"] is None
    assert any("'opt'" in w and "left out" in w for w in unlabelled["warnings"])
    with RewardClient(srv.url) as c:
        (res,) = c.score(items[1:], models=["opt", "a"])
    assert math.isnan(res.raw["opt"])  # the SDK reads the wire's null as NaN


def test_a_check_timeout_is_a_warning_not_a_500(srv):
    items = [{"prompt": "p", "response": "sleep"}, {"prompt": "p", "response": "fine"}]
    r = score(srv, items, models=["slow", "a"])
    assert r.status_code == 200, r.text
    hung, fine = r.json()["results"]
    assert hung["raw"]["slow"] == 0.0 and any("'slow'" in w and "timed out" in w for w in hung["warnings"])
    assert fine["raw"]["slow"] == 1.0 and not fine.get("warnings")
    metrics = httpx.get(f"{srv.url}/metrics").text
    assert 'rewardserve_check_timeouts_total{model="slow"} 1.0' in metrics
    assert 'rewardserve_check_seconds_count{model="correct"}' in metrics
    assert 'rewardserve_check_failures_total{model="correct",reason="crashed"} 0.0' in metrics


def test_models_lists_kinds_needs_epsilon_and_question(srv):
    models = {m["name"]: m for m in httpx.get(f"{srv.url}/v1/models").json()["models"]}
    assert models["correct"]["kind"] == "verifier" and models["correct"]["needs"] == ["label"]
    assert models["correct"]["epsilon"] == 1e-3 and models["correct"]["transform"] == "check"
    assert models["fmt"]["needs"] == [] and models["fmt"]["epsilon"] == 0.01
    assert models["opt"]["missing_label"] == "skip"
    assert models["polite"]["kind"] == "judge" and models["polite"]["question"] == QUESTION
    assert models["polite"]["needs"] == [] and models["a"]["needs"] == []


def test_labels_from_every_adapter_reach_the_math_check(srv):
    # verl: its reward loop calls compute_score with ground_truth
    fn = verl_load_reward_fn("pkg://rewardclient/verl", "compute_score", {"url": srv.url, "models": ["correct"]})
    batch = [
        VerlItem("gsm8k", resp, "4", extra_info={"prompt": PROMPT}) for resp in (RIGHT, WRONG, "\\boxed{\\frac{8}{2}}")
    ]
    out = asyncio.run(verl_reward_loop(fn, batch))
    assert [o["reward_extra_info"]["correct/raw"] for o in out] == [1.0, 0.0, 1.0]
    # OpenRLHF: labels
    prompts = ["<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"] * 2
    body = {"query": [p + r for p, r in zip(prompts, (RIGHT, WRONG))], "prompts": prompts, "labels": ["4", "4"]}
    r = httpx.post(f"{srv.url}/get_reward", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["extra_logs"]["correct/raw"] == [1.0, 0.0]

    # slime: label
    async def slime():
        async with SlimeRemoteRM(f"{srv.url}/slime/reward") as rm:
            return [await rm(PROMPT, resp, "4") for resp in (RIGHT, WRONG)]

    assert [g["correct/raw"] for g in asyncio.run(slime())] == [1.0, 0.0]
    # TRL: the dataset column (label_column auto picks 'answer')
    trl = RewardServeReward(srv.url, models=["correct"], output="transformed", model="correct")
    rewards = trl(prompts=[PROMPT, PROMPT], completions=[RIGHT, WRONG], answer=["4", "4"])
    assert rewards == [0.0, pytest.approx(math.log(1e-3))]
    # the SDK: the item's label
    with RewardClient(srv.url) as c:
        res = c.score([{"prompt": PROMPT, "response": r_, "label": ["4", "four"]} for r_ in (RIGHT, WRONG)])
    assert [x.raw["correct"] for x in res] == [1.0, 0.0]
