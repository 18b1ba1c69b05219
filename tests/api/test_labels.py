"""Items carry their ground truth as ``label`` (any JSON value) on every route and in the SDK: it
reaches the scoring pipeline as sent, reward models ignore it, and it is never echoed (answers,
422 bodies) nor logged."""

from __future__ import annotations

import logging

import httpx
import pytest

from rewardclient import RewardClient
from tests.client.trainer_calls import ScoreSpy

SECRET = "ground-truth-7731"
LABELS = [SECRET, 42, 2.5, True, None, [SECRET, 1], {"answer": SECRET, "tests": [{"in": "1", "out": "2"}]}]


def test_labels_of_every_json_kind_reach_the_pipeline_and_leave_the_rewards_alone(server, client, caplog):
    caplog.set_level(logging.DEBUG)
    items = [{"prompt": "How much is 2 + 2?", "response": f"It is {k}."} for k in range(len(LABELS))]
    plain = client.post("/v1/score", json={"items": items, "models": ["a", "cls"]})
    with ScoreSpy(server.state.scorer) as spy:
        labelled = client.post(
            "/v1/score", json={"items": [{**it, "label": lb} for it, lb in zip(items, LABELS)], "models": ["a", "cls"]}
        )
    assert labelled.status_code == 200 and SECRET not in labelled.text and "label" not in labelled.text
    assert labelled.json()["results"] == plain.json()["results"]
    assert [it.label for it in spy.items] == LABELS
    assert SECRET not in caplog.text


@pytest.mark.parametrize(
    "item",
    [
        {"prompt": "p", "label": SECRET},  # no response
        {"prompt": "p", "response": 7, "label": {"a": SECRET}},
        {"prompt": [{"role": "user", "text": "x"}], "response": "r", "label": [SECRET]},
        {"prompt": "p", "response": "r", "label": SECRET, "lable": SECRET},  # an unknown field
        {"prompt": "p", "response": "r", "label": SECRET, "reference": {"a": "high"}},
    ],
)
def test_a_422_never_echoes_the_label(client, item):
    r = client.post("/v1/score", json={"items": [item]})
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_request", r.text
    assert SECRET not in r.text


def test_the_sdk_sends_the_label(server):
    with ScoreSpy(server.state.scorer) as spy, RewardClient(server.url) as c:
        c.score(
            [
                {"prompt": "p", "response": "r", "label": {"answer": "4"}},
                {"prompt": "p", "response": "r", "label": 0},
                {"prompt": "p", "response": "r"},
                ("p", "r"),
            ],
            models=["a"],
        )
    assert [it.label for it in spy.items] == [{"answer": "4"}, 0, None, None]


def test_openrlhf_labels_reach_the_items(server, client):
    prompts = ["<|user|>How much is 2 + 2?<|assistant|>", "Human: hi\n\nAssistant:"]
    body = {"query": [p + " four" for p in prompts], "prompts": prompts, "labels": [SECRET, {"n": 4}]}
    with ScoreSpy(server.state.scorer) as spy:
        r = client.post("/get_reward", json=body)
    assert r.status_code == 200 and SECRET not in r.text
    assert [it.label for it in spy.items] == [SECRET, {"n": 4}]
    r = client.post("/get_reward", json={**body, "labels": [SECRET]})
    assert r.status_code == 422 and "'labels' has 1" in r.json()["error"]["message"] and SECRET not in r.text
    # OpenRLHF before 0.11.2 sends an empty shard to every URL but the first
    r = client.post("/get_reward", json={"query": [], "prompts": [], "labels": []})
    assert r.status_code == 200 and r.json() == {"rewards": [], "scores": [], "extra_logs": {}}
    assert httpx.post(f"{server.url}/get_reward", json={"query": [], "prompts": []}).status_code == 200
