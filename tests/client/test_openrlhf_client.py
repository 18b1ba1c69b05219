"""OpenRLHF's own reward client (``openrlhf.utils.agent.SingleTurnAgentExecutor`` of the release
installed by scripts/setup.sh) against two live replicas, configured as ``--reward.remote_url
http://rm-0/get_reward,http://rm-1/get_reward`` is: the policy's prompt rendered with its chat template,
the response generated up to its end-of-turn token, the label from ``--data.label_key``. Each reward
is that of ``/v1/score`` for the conversation, the labels arrive, the samples go to both replicas."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import httpx
import pytest
from transformers import AutoTokenizer

from rewardclient import RewardClient
from rewardserve.app import create_app
from tests.chat_templates import SPECS, conversations, generated_ids, make_tokenizer, openrlhf_sample
from tests.conftest import LiveServer, tiny_settings

from .trainer_calls import ScoreSpy

agent = pytest.importorskip("openrlhf.utils.agent", reason="OpenRLHF is installed by scripts/setup.sh")
TOL = 1e-4
MODELS = ["a", "cls"]


@pytest.fixture(scope="module")
def replicas(tiny, tmp_path_factory):
    servers = [
        LiveServer(create_app(tiny_settings(tiny, tmp_path_factory.mktemp(f"rm{k}"), openrlhf={"models": MODELS})))
        for k in range(2)
    ]
    for s in servers:
        s.__enter__()
    yield servers
    for s in servers:
        s.__exit__(None, None, None)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    spec = next(s for s in SPECS if s.name == "smollm2")
    return spec, AutoTokenizer.from_pretrained(make_tokenizer(spec, tmp_path_factory.mktemp("smollm2") / "tok"))


class Engine:
    """vLLM's ``generate`` as the executor awaits it: the policy's tokens for each prompt."""

    def __init__(self, by_prompt: dict[tuple[int, ...], list[int]]):
        self.by_prompt = by_prompt

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        ids = self.by_prompt[tuple(prompt_token_ids)]
        return SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids, finish_reason="stop", logprobs=None)])


def test_openrlhf_executor_against_two_replicas(replicas, smollm2):
    spec, tok = smollm2
    convs = conversations(spec)
    samples = []  # (prompt as the dataset renders it with --data.apply_chat_template, label)
    engine = Engine({})
    for k, (m, r) in enumerate(convs * 2):
        prompt = tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
        p_ids, r_ids = generated_ids(tok, m, r)
        engine.by_prompt[tuple(p_ids)] = r_ids
        samples.append((prompt, f"label-{k}" if k % 2 else {"answer": k}))
    remote_url = ",".join(f"{s.url}/get_reward" for s in replicas).split(",")  # as train_ppo_ray parses it
    executor = agent.SingleTurnAgentExecutor(remote_rm_url=remote_url)
    params = SimpleNamespace(max_tokens=64, logprobs=None)

    async def rollout():
        return await asyncio.gather(*(executor.execute(p, label, params, 1024, tok, engine) for p, label in samples))

    with ScoreSpy(replicas[0].state.scorer) as spy0, ScoreSpy(replicas[1].state.scorer) as spy1:
        outputs = asyncio.run(rollout())
    with RewardClient(replicas[0].url) as c:
        want = c.score([(spec.as_sent(m), r) for m, r in convs * 2], models=MODELS)
    deltas = []
    for out, w in zip(outputs, want, strict=True):
        assert out["reward"] is not None, "the executor could not fetch the reward"
        deltas += [abs(out["reward"][0] - w.aggregate), abs(out["scores"][0] - w.aggregate)]
        deltas += [abs(out["extra_logs"][f"{m}/raw"][0] - w.raw[m]) for m in MODELS]
        deltas += [abs(out["extra_logs"][f"{m}/transformed"][0] - w.transformed[m]) for m in MODELS]
    print(f"max |Δ| OpenRLHF 0.11.2 SingleTurnAgentExecutor, two replicas: {max(deltas):.2e}")
    assert max(deltas) <= TOL
    # the samples are spread over both replicas, one per request, each with its label
    assert len(spy0.requests) == len(spy1.requests) == len(samples) // 2
    assert sorted(map(repr, (it.label for it in spy0.items + spy1.items))) == sorted(repr(lb) for _, lb in samples)


def test_the_legacy_sharding_gets_answers_from_every_replica(replicas, smollm2):
    """OpenRLHF before 0.11.2 (``--remote_rm_url`` releases included) splits each request's samples
    over the URLs in order: one sample goes to the first replica, an empty request to the second; every request must
    get an answer or the executor drops the sample's reward."""
    spec, tok = smollm2
    m, r = conversations(spec)[0]
    query, prompt = openrlhf_sample(tok, m, r)
    shards = [{"query": [query], "prompts": [prompt], "labels": ["4"]}, {"query": [], "prompts": [], "labels": []}]
    answers = [httpx.post(f"{s.url}/get_reward", json=body) for s, body in zip(replicas, shards)]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[1].json() == {"rewards": [], "scores": [], "extra_logs": {}}
    with RewardClient(replicas[0].url) as c:
        want = c.score([(spec.as_sent(m), r)], models=MODELS)[0]
    delta = abs(answers[0].json()["rewards"][0] - want.aggregate)
    print(f"max |Δ| OpenRLHF before 0.11.2 (sharded request): {delta:.2e}")
    assert delta <= TOL
