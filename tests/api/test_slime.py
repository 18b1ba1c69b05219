"""slime's remote reward model (``--rm-type remote_rm --rm-url …/slime/reward --reward-key score``)
against live servers: slime's exact body and retry loop (``tests/client/trainer_calls.py``), prompts
as messages or templated with the policy's chat template, the ``slime:`` config section, and the
same auth, limits, errors and metrics as ``/v1/score``."""

from __future__ import annotations

import asyncio
import logging
import threading

import httpx
import pytest
from transformers import AutoTokenizer

from rewardclient import RewardClient, canonical_prompt
from rewardserve.app import create_app
from rewardserve.backends import build_backend
from tests.chat_templates import SPECS, conversations, make_tokenizer, response_with_markup
from tests.client.trainer_calls import ScoreSpy, SlimeRemoteRM, slime_reward_value
from tests.conftest import LiveServer, tiny_settings

TOL = 1e-4
SECRET = "the-answer-is-4217"
SLIME = {"models": ["a", "cls"], "weights": {"a": 2.0}, "reference_set": "slime-policy"}
OPTIONS = {"models": ["a", "cls"], "aggregate": {"method": "lsc_sum", "weights": {"a": 2.0}}}


@pytest.fixture(scope="module")
def srv(tiny, tmp_path_factory):
    settings = tiny_settings(tiny, tmp_path_factory.mktemp("slime"), slime=SLIME)
    with LiveServer(create_app(settings)) as s:
        yield s


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    spec = next(s for s in SPECS if s.name == "smollm2")
    return spec, AutoTokenizer.from_pretrained(make_tokenizer(spec, tmp_path_factory.mktemp("smollm2") / "tok"))


def _slime(url: str, samples: list[tuple]) -> list:
    """Each sample through slime's remote_rm, all at once (slime's rollout gathers them)."""

    async def run():
        async with SlimeRemoteRM(url + "/slime/reward") as rm:
            return await asyncio.gather(*(rm(p, r, label) for p, r, label in samples))

    return asyncio.run(run())


def test_slime_body_gives_the_score_rewards_and_sends_the_label(srv, smollm2):
    """Messages (slime without --apply-chat-template) and the prompt templated with the policy's chat
    template (with it; the response decoded with or without its end-of-turn token) get the rewards of
    /v1/score for the conversation, with the slime section's models, weights and reference set."""
    spec, tok = smollm2
    convs = conversations(spec)
    with RewardClient(srv.url) as c:
        c.put_references("a", [(spec.as_sent(convs[0][0]), 1.5)], reference_set="slime-policy")
        want = c.score([(spec.as_sent(m), r) for m, r in convs], reference_set="slime-policy", **OPTIONS)
    assert want[0].reference_source["a"] == "stored"  # the slime section's set
    samples = []
    for k, (m, r) in enumerate(convs):
        templated = tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
        samples += [
            (spec.as_sent(m), r, f"{SECRET}-{k}"),
            (templated, r, {"answer": [k, "x"]}),
            (templated, response_with_markup(tok, m, r), None),
        ]
    with ScoreSpy(srv.state.scorer) as spy:
        answers = _slime(srv.url, samples)
    deltas = []
    for k, w in enumerate(want):
        for a in answers[3 * k : 3 * k + 3]:
            assert set(a) == {"score", "a/raw", "a/transformed", "cls/raw", "cls/transformed"}
            deltas.append(abs(slime_reward_value(a, "score") - w.aggregate))
            deltas += [abs(a[f"{m}/raw"] - w.raw[m]) for m in ("a", "cls")]
            deltas += [abs(a[f"{m}/transformed"] - w.transformed[m]) for m in ("a", "cls")]
        assert answers[3 * k]["score"] == pytest.approx(2 * w.transformed["a"] + w.transformed["cls"], abs=1e-6)
    print(f"max |Δ| slime remote_rm (messages, templated, templated + <|im_end|>): {max(deltas):.2e}")
    assert max(deltas) <= TOL
    # every sample one request; each label reached the pipeline as sent
    assert len(spy.requests) == len(samples) and all(len(r) == 1 for r in spy.requests)
    assert sorted(map(repr, (it.label for it in spy.items))) == sorted(map(repr, (s[2] for s in samples)))
    by_label = {it.label: it for it in spy.items if isinstance(it.label, str)}
    for k, (m, r) in enumerate(convs):
        item = by_label[f"{SECRET}-{k}"]
        assert canonical_prompt(item.prompt) == canonical_prompt(spec.as_sent(m)) and item.response == r


def test_slime_retries_until_the_service_is_ready(tiny, tmp_path):
    """slime retries any failure with backoff: while the models load, /slime/reward answers 503
    (not_ready); the same sample succeeds once they are loaded."""
    gate = threading.Event()

    def gated(name, cfg, settings):
        gate.wait(60)
        return build_backend(name, cfg, settings)

    settings = tiny_settings(tiny, tmp_path, slime={"models": ["a"]})
    with LiveServer(create_app(settings, backend_factory=gated), wait_ready=False) as s:

        async def run():
            async with SlimeRemoteRM(s.url + "/slime/reward") as rm:
                task = asyncio.create_task(rm([{"role": "user", "content": "hi"}], "hello", "gt"))
                while not rm.attempts:
                    await asyncio.sleep(0.01)
                gate.set()  # the models load while slime backs off
                return await task, rm.attempts

        answer, attempts = asyncio.run(run())
        direct = httpx.post(
            s.url + "/v1/score",
            json={"items": [{"prompt": [{"role": "user", "content": "hi"}], "response": "hello"}], "models": ["a"]},
        ).json()["results"][0]
    assert attempts[0] == "503" and attempts[-1] == "200" and len(attempts) <= 6, attempts
    assert answer["score"] == pytest.approx(direct["aggregate"], abs=TOL)


def test_errors_limits_and_metrics_are_those_of_the_api(srv, caplog):
    """Invalid bodies are 422 invalid_request naming the field and never echo the label; a too long
    sample is 413; every request is counted under the route; the label is never logged."""
    caplog.set_level(logging.DEBUG)
    url = srv.url + "/slime/reward"
    cases = [
        ({"prompt": "p", "label": SECRET}, "response"),
        ({"prompt": [{"role": "user"}], "response": "r", "label": SECRET}, "prompt"),
        ({"prompt": 5, "response": "r", "label": {"secret": SECRET}}, "prompt"),
        ({"prompt": "p", "response": ["not", SECRET], "label": SECRET}, "response"),
    ]
    for body, field in cases:
        r = httpx.post(url, json=body)
        assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_request", r.text
        assert field in r.json()["error"]["message"] and SECRET not in r.text
    r = httpx.post(url, json={"prompt": "p", "response": "x" * 200_001, "label": SECRET})
    assert r.status_code == 413 and r.json()["error"]["type"] == "text_too_long" and SECRET not in r.text
    r = httpx.post(url, json={"prompt": "p", "response": "r", "label": SECRET})
    assert r.status_code == 200 and SECRET not in r.text
    assert SECRET not in caplog.text
    metrics = httpx.get(srv.url + "/metrics").text
    assert 'rewardserve_requests_total{route="/slime/reward",status="200"}' in metrics
    assert 'rewardserve_requests_total{route="/slime/reward",status="422"} 4.0' in metrics
    assert 'rewardserve_requests_total{route="/slime/reward",status="413"} 1.0' in metrics


def test_auth_is_that_of_the_api(tiny, tmp_path):
    """slime sends no Authorization header: with API keys configured the route needs one (401), unless
    the operator lists it in open_routes; a key limited to other sets may not use the slime set."""
    body = {"prompt": "p", "response": "r", "label": None}
    settings = tiny_settings(
        tiny, tmp_path, api_keys="slime-key-0123456789,other-key-0123456789 sets=other", slime={"models": ["a"]}
    )
    with LiveServer(create_app(settings)) as s:
        r = httpx.post(s.url + "/slime/reward", json=body)
        assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
        assert httpx.post(
            s.url + "/slime/reward", json=body, headers={"Authorization": "Bearer slime-key-0123456789"}
        ).is_success
        r = httpx.post(s.url + "/slime/reward", json=body, headers={"Authorization": "Bearer other-key-0123456789"})
        assert r.status_code == 403 and "'default'" in r.json()["error"]["message"]
        r = httpx.post(
            s.url + "/slime/reward",
            json=body,
            headers={"Authorization": "Bearer other-key-0123456789", "X-Reference-Set": "other"},
        )
        assert r.is_success
    opened = tiny_settings(
        tiny,
        tmp_path,
        api_keys="slime-key-0123456789",
        open_routes=["/healthz", "/readyz", "/metrics", "/slime/reward"],
        slime={"models": ["a"]},
    )
    with LiveServer(create_app(opened)) as s:
        assert httpx.post(s.url + "/slime/reward", json=body).is_success
        assert httpx.post(s.url + "/v1/score", json={"items": [body]}).status_code == 401


def test_the_slime_section_is_checked_like_openrlhf(tiny, tmp_path):
    from pydantic import ValidationError

    for bad, what in (
        ({"modles": ["a"]}, "modles"),
        ({"prompt_format": "chatmll"}, "prompt_format"),
        ({"reference_set": "no spaces"}, "reference_set"),
        ({"method": "mean"}, "method"),
    ):
        with pytest.raises(ValidationError, match=what):
            tiny_settings(tiny, tmp_path, slime=bad)
    assert tiny_settings(tiny, tmp_path).slime.method == "lsc_sum"
