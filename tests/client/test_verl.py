"""verl's two calling conventions against a live server (with an API key), configured the way
verl passes ``custom_reward_function.reward_kwargs``."""

from __future__ import annotations

import numpy as np
import pytest

from rewardclient import AuthenticationError, RewardClient
from rewardclient.trl import RewardServeReward
from rewardclient.verl import compute_score, compute_score_batch, get_client, prompt_from_extra_info
from rewardserve.app import create_app
from tests.conftest import LiveServer, tiny_settings

KEY = "verl-test-key-0123456789abcdef"
PROMPTS = [[{"role": "user", "content": f"question {i}?"}] for i in range(5)]
RESPONSES = [f"answer number {i} " * (i + 1) for i in range(5)]


@pytest.fixture(scope="module")
def keyed(tiny, tmp_path_factory):
    settings = tiny_settings(tiny, tmp_path_factory.mktemp("verl"), api_keys=KEY)
    with LiveServer(create_app(settings)) as s:
        yield s


def _kwargs(srv, **kw):
    return {"url": srv.url, "api_key": KEY, "models": ["a", "cls"], "aggregate": "raw_sum", **kw}


def test_naive_and_batch_conventions_match_the_sdk(keyed):
    with RewardClient(keyed.url, api_key=KEY) as c:
        want = c.score(
            [(p, r) for p, r in zip(PROMPTS, RESPONSES)], models=["a", "cls"], aggregate={"method": "raw_sum"}
        )
    naive = [
        compute_score("src", r, None, {"prompt": p, "index": i}, **_kwargs(keyed))
        for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES))
    ]
    # verl's batch manager passes numpy object arrays; a parquet row may hold the messages as an array too
    batch = compute_score_batch(
        np.array(["src"] * 5, dtype=object),
        RESPONSES,
        [None] * 5,
        np.array([{"prompt": np.array(p, dtype=object)} for p in PROMPTS], dtype=object),
        **_kwargs(keyed),
    )
    for w, n, b in zip(want, naive, batch):
        assert set(n) == set(b) == {"score", "a/raw", "a/transformed", "cls/raw", "cls/transformed"}
        assert all(isinstance(v, float) for v in n.values())
        assert n["score"] == pytest.approx(w.aggregate, abs=1e-4) == pytest.approx(w.raw["a"] + w.raw["cls"], abs=1e-4)
        for m in ("a", "cls"):
            assert n[f"{m}/raw"] == pytest.approx(w.raw[m], abs=1e-4) == pytest.approx(b[f"{m}/raw"], abs=1e-4)
            assert n[f"{m}/transformed"] == pytest.approx(w.transformed[m], abs=1e-4)


def test_lsc_weights_prompt_key_and_question_fallback(keyed):
    p, r = PROMPTS[2], RESPONSES[2]
    base = compute_score("s", r, None, {"prompt": p}, url=keyed.url, api_key=KEY, models=["a"])
    weighted = compute_score("s", r, None, {"prompt": p}, url=keyed.url, api_key=KEY, models=["a"], weights={"a": 2.0})
    assert base["score"] == pytest.approx(base["a/transformed"], abs=1e-9) and base["score"] < 0  # lsc_sum by default
    assert weighted["score"] == pytest.approx(2 * base["score"], abs=1e-6)
    assert compute_score("s", r, None, {"question": p}, url=keyed.url, api_key=KEY, models=["a"]) == base
    assert (
        compute_score(
            "s", r, None, {"chat": p, "prompt": "ignored"}, url=keyed.url, api_key=KEY, models=["a"], prompt_key="chat"
        )
        == base
    )
    string = compute_score("s", r, None, {"prompt": "question 2?"}, url=keyed.url, api_key=KEY, models=["a"])
    assert string["score"] != base["score"]  # a string prompt is another prompt than the one-message chat


def test_missing_prompt_is_a_clear_error_naming_the_key(keyed):
    with pytest.raises(ValueError, match=r"'prompt' or 'question'.*extra_info has keys \['index'\]"):
        compute_score("s", "r", None, {"index": 3}, url=keyed.url, api_key=KEY)
    with pytest.raises(ValueError, match=r"'chat'.*extra_info has None"):
        compute_score("s", "r", None, None, url=keyed.url, api_key=KEY, prompt_key="chat")
    with pytest.raises(ValueError, match=r"extra_info\['prompt'\] is neither a string"):
        compute_score("s", "r", None, {"prompt": [{"text": "no role"}]}, url=keyed.url, api_key=KEY)
    with pytest.raises(TypeError, match="unknown reward_kwargs.*'urll'"):
        compute_score("s", "r", None, {"prompt": "p"}, urll=keyed.url)


def test_api_key_and_client_cache(keyed):
    with pytest.raises(AuthenticationError):
        compute_score("s", "r", None, {"prompt": "p"}, url=keyed.url, api_key="wrong")
    assert get_client(keyed.url, KEY) is get_client(keyed.url + "/", KEY)
    assert get_client(keyed.url, KEY) is not get_client(keyed.url, "wrong")


def test_reference_set_and_prompt_format_are_sent_only_when_given():
    c = RewardClient("http://x", max_items_per_request=2)
    items = [("p", "r")] * 3
    assert all(
        "reference_set" not in call.json and "prompt_format" not in call.json
        for call in c._score_calls(items, None, None)
    )
    bodies = [
        call.json for call in c._score_calls(items, None, None, reference_set="policy-v2", prompt_format="chatml")
    ]
    assert len(bodies) == 2 and all(
        body["reference_set"] == "policy-v2" and body["prompt_format"] == "chatml" for body in bodies
    )
    assert RewardServeReward("http://x", reference_set="policy-v2").reference_set == "policy-v2"


def test_prompt_from_extra_info_shapes():
    msgs = [{"role": "user", "content": "hi"}]
    assert prompt_from_extra_info({"prompt": "hi"}) == "hi"
    assert prompt_from_extra_info({"prompt": np.array(msgs, dtype=object)}) == msgs
    assert prompt_from_extra_info({"question": msgs[0]}) == msgs
    assert prompt_from_extra_info({"prompt": None, "question": "q"}) == "q"


def test_reference_set_through_verl_trl_and_the_sdk_live(keyed):
    """Two sets hold different references for one prompt: each adapter scores against the set it names,
    and says where the reference came from."""
    p, r = PROMPTS[1], RESPONSES[1]
    with RewardClient(keyed.url, api_key=KEY) as c:
        c.put_references("a", [(p, -3.0)], reference_set="policy-v1")
        c.put_references("a", [(p, 2.0)], reference_set="policy-v2")
        v1 = c.score([(p, r)], models=["a"], reference_set="policy-v1")[0]
        v2 = c.score([(p, r)], models=["a"], reference_set="policy-v2")[0]
        fallback = c.score([(p, r)], models=["a"], reference_set="no-such-set")[0]
    assert (v1.reference["a"], v2.reference["a"]) == (-3.0, 2.0)
    assert v1.reference_source == v2.reference_source == {"a": "stored"} and v1.p_all_good is not None
    assert fallback.reference_source == {"a": "config_default"} and fallback.p_all_good is None
    for rset, want in (("policy-v1", v1), ("policy-v2", v2)):
        naive = compute_score("s", r, None, {"prompt": p}, url=keyed.url, api_key=KEY, models=["a"], reference_set=rset)
        batch = compute_score_batch(
            ["s"], [r], [None], [{"prompt": p}], url=keyed.url, api_key=KEY, models=["a"], reference_set=rset
        )[0]
        trl = RewardServeReward(keyed.url, api_key=KEY, models=["a"], reference_set=rset)
        assert naive["score"] == pytest.approx(want.aggregate, abs=1e-6) == pytest.approx(batch["score"], abs=1e-6)
        assert trl(prompts=[p], completions=[r])[0] == pytest.approx(want.aggregate, abs=1e-6)
