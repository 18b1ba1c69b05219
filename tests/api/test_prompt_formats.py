"""The same conversation gets the same rewards however a trainer sends it: as messages, as OpenRLHF
sends it (a prompt rendered with the policy's chat template, ``query`` = decode(prompt + response ids)
with special tokens), as a templated string to /v1/score, or as verl sends it — for every family,
through a live server with encoder heads, an encoder classifier and a decoder RM with its own template."""

from __future__ import annotations

import httpx
import pytest
from transformers import AutoTokenizer

from rewardclient import prompt_fingerprint
from rewardclient.verl import compute_score, compute_score_batch
from rewardserve.app import create_app
from tests.chat_templates import (
    SPECS,
    conversations,
    make_tokenizer,
    openrlhf_sample,
    response_with_markup,
    verl_response,
)
from tests.conftest import LiveServer, tiny_settings

MODELS = ["a", "b", "cls", "dec"]
TOL = 1e-4


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat_templates")
    return {s.name: (s, AutoTokenizer.from_pretrained(make_tokenizer(s, root / s.name)), root / s.name) for s in SPECS}


@pytest.fixture(scope="module")
def srv(tiny, tmp_path_factory, templates):
    backbones = {
        "enc": {
            "kind": "encoder_head",
            "path": str(tiny["encoder"]),
            "max_length": 256,
            "models": {"a": {"head": str(tiny["head_a"])}, "b": {"head": str(tiny["head_b"])}},
        },
        "clsbb": {
            "kind": "sequence_classifier",
            "path": str(tiny["enc_cls"]),
            "max_length": 256,
            "models": {"cls": {"transform": "identity"}},
        },
        "decbb": {
            "kind": "sequence_classifier",
            "path": str(tiny["dec_chat"]),
            "max_length": 256,
            "models": {"dec": {}},
        },
    }
    settings = tiny_settings(
        tiny,
        tmp_path_factory.mktemp("fmt"),
        backbones=backbones,
        openrlhf={},
        allowed_prompt_formats=[f"tokenizer:{templates['custom'][2]}"],  # what a request may name
    )
    with LiveServer(create_app(settings)) as s:
        yield s


def _score(c: httpx.Client, items: list[dict], **extra) -> dict:
    r = c.post("/v1/score", json={"items": items, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def _close(got: dict, want: dict) -> None:
    """raw per model and the aggregate within TOL."""
    assert set(got["raw"]) == set(want["raw"]) == set(MODELS)
    for m in MODELS:
        assert abs(got["raw"][m] - want["raw"][m]) <= TOL, (m, got["raw"][m], want["raw"][m])
    assert abs(got["aggregate"] - want["aggregate"]) <= TOL


@pytest.mark.parametrize("name", [s.name for s in SPECS if s.family])
def test_every_way_of_sending_gives_the_messages_rewards(srv, templates, name):
    spec, tok, _ = templates[name]
    convs = conversations(spec)
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        want = _score(c, [{"prompt": spec.as_sent(m), "response": r} for m, r in convs])["results"]
        samples = [openrlhf_sample(tok, m, r, pad=k) for k, (m, r) in enumerate(convs)]
        # the templated prompt and the response with its end-of-turn (and padding) markup, to /v1/score
        templated = _score(
            c,
            [
                {"prompt": p, "response": response_with_markup(tok, m, r, pad=k)}
                for k, ((_, p), (m, r)) in enumerate(zip(samples, convs))
            ],
        )["results"]
        # OpenRLHF: one sample per request
        openrlhf = []
        for q, p in samples:
            r = c.post("/get_reward", json={"query": [q], "prompts": [p], "labels": [None]})
            assert r.status_code == 200, r.text
            openrlhf.append(r.json())
    # verl: the response decoded without special tokens, the prompt (templated, or messages) in extra_info
    verl_templated = compute_score_batch(
        [name] * len(convs),
        [verl_response(tok, m, r) for m, r in convs],
        [None] * len(convs),
        [{"prompt": p} for _, p in samples],
        url=srv.url,
    )
    verl_messages = [
        compute_score(name, verl_response(tok, m, r), None, {"prompt": spec.as_sent(m)}, url=srv.url) for m, r in convs
    ]
    for k, w in enumerate(want):
        _close(templated[k], w)
        assert "warnings" not in templated[k]
        logs = openrlhf[k]["extra_logs"]
        _close({"raw": {m: logs[f"{m}/raw"][0] for m in MODELS}, "aggregate": openrlhf[k]["rewards"][0]}, w)
        for v in (verl_templated[k], verl_messages[k]):
            _close({"raw": {m: v[f"{m}/raw"] for m in MODELS}, "aggregate": v["score"]}, w)


def test_plain_reads_the_markup_as_text(srv, templates):
    """The check above can fail: read as plain text, the templated prompt scores differently."""
    spec, tok, _ = templates["smollm2"]
    messages, response = conversations(spec)[0]
    query, prompt = openrlhf_sample(tok, messages, response)
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        want = _score(c, [{"prompt": spec.as_sent(messages), "response": response}])["results"][0]
        with_markup = response_with_markup(tok, messages, response)
        plain = _score(c, [{"prompt": prompt, "response": with_markup}], prompt_format="plain")["results"][0]
        named = _score(c, [{"prompt": prompt, "response": with_markup}], prompt_format="chatml")["results"][0]
    assert max(abs(plain["raw"][m] - want["raw"][m]) for m in MODELS) > 1e-3
    _close(named, want)


def test_house_template_with_prompt_format_tokenizer(srv, templates):
    spec, tok, path = templates["custom"]
    convs = conversations(spec)
    items = [{"prompt": openrlhf_sample(tok, m, r)[1], "response": response_with_markup(tok, m, r)} for m, r in convs]
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        want = _score(c, [{"prompt": m, "response": r} for m, r in convs])["results"]
        got = _score(c, items, prompt_format=f"tokenizer:{path}")["results"]
        auto = _score(c, items)["results"]
    for g, w, a in zip(got, want, auto):
        _close(g, w)
        assert abs(a["raw"]["dec"] - w["raw"]["dec"]) > 1e-3  # not detected: read as text


def test_stored_reference_is_found_whichever_way_the_prompt_arrives(srv, templates):
    spec, tok, _ = templates["llama3"]
    messages, response = conversations(spec)[1]
    query, prompt = openrlhf_sample(tok, messages, response)
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        put = c.post("/v1/references", json={"model": "a", "entries": [{"prompt": prompt, "value": 0.625}]})
        assert put.status_code == 200, put.text
        assert put.json()["fingerprints"] == [prompt_fingerprint(messages)]
        for item in (
            {"prompt": messages, "response": response},
            {"prompt": prompt, "response": response_with_markup(tok, messages, response)},
        ):
            assert _score(c, [item], models=["a"])["results"][0]["reference"]["a"] == 0.625
        want = _score(c, [{"prompt": messages, "response": response}], models=["a"])["results"][0]["transformed"]["a"]
    verl = compute_score("x", response, None, {"prompt": prompt}, url=srv.url, models=["a"])
    assert abs(verl["a/transformed"] - want) <= TOL


def test_unparsable_templated_prompt_is_scored_as_plain_text_with_a_warning(srv):
    text = "<|im_start|>user\nan unterminated turn"
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        got = _score(c, [{"prompt": text, "response": "ok"}, {"prompt": "How do I boil an egg?", "response": "ok"}])[
            "results"
        ]
        plain = _score(c, [{"prompt": text, "response": "ok"}], prompt_format="plain")["results"][0]
    assert any("does not parse" in w and "plain text" in w for w in got[0]["warnings"])
    assert "warnings" not in got[1] and "warnings" not in plain
    _close(got[0], plain)


@pytest.mark.parametrize(
    "fmt,status,etype",
    [
        ("chat-ml", 422, "invalid_request"),
        ("tokenizer:", 422, "invalid_request"),
        ("tokenizer:/nonexistent/tokenizer", 422, "invalid_prompt_format"),
        (
            "tokenizer:rewardserve-tests/not-in-the-hub-cache",
            422,
            "invalid_prompt_format",
        ),  # a request does not download
    ],
)
def test_bad_prompt_format_is_a_422_with_the_error_body(srv, fmt, status, etype):
    r = httpx.post(
        f"{srv.url}/v1/score", json={"items": [{"prompt": "p", "response": "r"}], "prompt_format": fmt}, timeout=60
    )
    assert r.status_code == status
    err = r.json()["error"]
    assert err["type"] == etype and "prompt_format" in err["message"]
