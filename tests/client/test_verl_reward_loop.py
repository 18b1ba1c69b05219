"""verl's reward loop (current verl) and its legacy managers, calling ``rewardclient.verl`` as verl
loads and calls a custom reward function, against a live server with an API key: every convention
gives the rewards of ``/v1/score`` for the same conversation, and the ground truth arrives as the
items' label."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import rewardclient.verl as verl_module
from rewardclient import RewardClient, canonical_prompt
from rewardclient.verl import compute_score, compute_score_batch
from rewardserve.app import create_app
from tests.chat_templates import CONVERSATIONS, RESPONSES
from tests.conftest import LiveServer, tiny_settings

from .trainer_calls import ScoreSpy, VerlItem, verl_load_reward_fn, verl_reward_loop

KEY = "verl-loop-key-0123456789"
MODELS = ["a", "cls"]
TOL = 1e-4
# a GRPO group: two responses to each of four prompts (messages, as verl's dataset keeps them)
PROMPTS = [*CONVERSATIONS, [{"role": "user", "content": "Name a prime number."}]]
GROUP = [(p, r) for p in PROMPTS for r in (RESPONSES[PROMPTS.index(p) % len(RESPONSES)], "I do not know.")]
# ground truths as a verl parquet row holds them: strings, numpy arrays, numpy scalars in dicts
GROUND_TRUTHS = ["42", np.array(["Paris", "paris"], dtype=object), {"answer": "x", "n": np.int64(3)}, None] * 2
PLAIN_LABELS = ["42", ["Paris", "paris"], {"answer": "x", "n": 3}, None] * 2


@pytest.fixture(scope="module")
def srv(tiny, tmp_path_factory):
    settings = tiny_settings(tiny, tmp_path_factory.mktemp("verl_loop"), api_keys=KEY)
    with LiveServer(create_app(settings)) as s:
        yield s


@pytest.fixture(scope="module")
def want(srv):
    """The rewards of ``/v1/score`` for each conversation of the group."""
    with RewardClient(srv.url, api_key=KEY) as c:
        return c.score(GROUP, models=MODELS)


def _kwargs(srv, **kw):
    return {"url": srv.url, "api_key": KEY, "models": MODELS, **kw}


def _batch():
    return [
        VerlItem("openai/gsm8k", r, gt, {"prompt": p, "index": i, "split": "train"}, num_turns=2, reward_scores={})
        for i, ((p, r), gt) in enumerate(zip(GROUP, GROUND_TRUTHS))
    ]


def _max_delta(outs, want) -> float:
    deltas = []
    for o, w in zip(outs, want, strict=True):
        info = o["reward_extra_info"]
        deltas.append(abs(o["reward_score"] - w.aggregate))
        for m in MODELS:
            deltas += [abs(info[f"{m}/raw"] - w.raw[m]), abs(info[f"{m}/transformed"] - w.transformed[m])]
    return max(deltas)


@pytest.mark.parametrize("name", ["compute_score", "compute_score_async"])
@pytest.mark.parametrize("router", [None, "10.0.0.1:8000"], ids=["no_rm", "verl_rm"])
@pytest.mark.parametrize("path", ["file", "pkg"])
def test_reward_loop_call_gives_the_score_rewards_and_sends_labels(srv, want, name, router, path):
    """verl loads the function from ``reward.custom_reward_function.path`` (the file, or
    ``pkg://rewardclient.verl``), calls it per response, all at once, with ``num_turns`` and
    ``rollout_reward_scores`` in extra_info and, when it serves a reward model, the two keywords."""
    fn = verl_load_reward_fn(verl_module.__file__ if path == "file" else "pkg://rewardclient.verl", name, _kwargs(srv))
    with ScoreSpy(srv.state.scorer) as spy:
        outs = asyncio.run(verl_reward_loop(fn, _batch(), router, reward_model_tokenizer=object() if router else None))
    delta = _max_delta(outs, want)
    print(f"max |Δ| verl reward loop {name} ({path}, {router or 'no reward model'}): {delta:.2e}")
    assert delta <= TOL
    assert set(outs[0]["reward_extra_info"]) == {"score", *(f"{m}/{k}" for m in MODELS for k in ("raw", "transformed"))}
    # one request per response, each label as sent (numpy values as plain JSON)
    assert len(spy.requests) == len(GROUP) and all(len(r) == 1 for r in spy.requests)
    assert _labels(spy) == {(canonical_prompt(p), r): label for (p, r), label in zip(GROUP, PLAIN_LABELS)}


def _labels(spy):
    """Each item the pipeline received, (prompt, response) → label."""
    return {(canonical_prompt(it.prompt), it.response): it.label for it in spy.items}


def test_async_twin_keeps_the_whole_group_in_flight_on_one_client(srv, want):
    """The server holds each request until the whole group is inside the pipeline: only a client that
    keeps all of them in flight at once gets through without the hold's timeout."""
    fn = verl_load_reward_fn("pkg://rewardclient.verl", "compute_score_async", _kwargs(srv))

    async def run():
        outs = await verl_reward_loop(fn, _batch())
        clients = {id(verl_module.get_async_client(srv.url, KEY)) for _ in range(3)}
        return outs, clients

    with ScoreSpy(srv.state.scorer, hold=len(GROUP), hold_timeout=20) as spy:
        outs, clients = asyncio.run(run())
    assert spy.max_in_flight == len(GROUP)
    assert len(clients) == 1  # one client per event loop
    assert _max_delta(outs, want) <= TOL


def test_sync_function_runs_in_verl_threads_concurrently(srv):
    fn = verl_load_reward_fn("pkg://rewardclient.verl", "compute_score", _kwargs(srv))
    with ScoreSpy(srv.state.scorer, hold=2, hold_timeout=20) as spy:
        asyncio.run(verl_reward_loop(fn, _batch()))
    assert spy.max_in_flight >= 2


@pytest.mark.parametrize("name", ["compute_score", "compute_score_async"])
def test_a_typo_in_reward_kwargs_is_an_error_naming_the_known_keys(srv, name):
    fn = verl_load_reward_fn("pkg://rewardclient.verl", name, _kwargs(srv, urll="http://x"))
    with pytest.raises(TypeError, match=r"unknown reward_kwargs \['urll'\]; known: .*'max_concurrency'.*'url'"):
        asyncio.run(verl_reward_loop(fn, _batch()[:1], "10.0.0.1:8000"))


def test_legacy_managers_give_the_same_rewards(srv, want):
    """Older verl: the ``batch`` manager calls ``compute_score_batch`` once with keyword arrays (numpy
    object arrays; ``rollout_reward_scores`` in each extra_info); the ``naive`` manager calls
    ``compute_score`` per response with keywords and no additions."""
    fn = verl_load_reward_fn(verl_module.__file__, "compute_score_batch", _kwargs(srv))
    extras = np.array([{"prompt": np.array(p, dtype=object), "rollout_reward_scores": {}} for p, _ in GROUP])
    with ScoreSpy(srv.state.scorer) as spy:
        batch = fn(
            data_sources=np.array(["openai/gsm8k"] * len(GROUP), dtype=object),
            solution_strs=[r for _, r in GROUP],
            ground_truths=list(GROUND_TRUTHS),
            extra_infos=extras,
        )
    assert len(spy.requests) == 1 and [it.label for it in spy.items] == PLAIN_LABELS
    naive = [
        compute_score(data_source="s", solution_str=r, ground_truth=gt, extra_info={"prompt": p}, **_kwargs(srv))
        for (p, r), gt in zip(GROUP, GROUND_TRUTHS)
    ]
    deltas = [
        max(abs(x["score"] - w.aggregate), *(abs(x[f"{m}/raw"] - w.raw[m]) for m in MODELS))
        for outs in (batch, naive)
        for x, w in zip(outs, want, strict=True)
    ]
    print(f"max |Δ| verl legacy batch and naive managers: {max(deltas):.2e}")
    assert max(deltas) <= TOL
    assert compute_score_batch([], [], [], [], **_kwargs(srv)) == []


def test_unserializable_ground_truth_is_a_clear_error(srv):
    with pytest.raises(TypeError, match="a label must be JSON data.*got object"):
        compute_score("s", "r", object(), {"prompt": "p"}, **_kwargs(srv))
