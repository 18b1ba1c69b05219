"""Prompt-prefix sharing on tiny random Llama reward models (real from_pretrained, real forwards):
the same raw reward with and without sharing, through the backend and through a live server."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from rewardserve.app import create_app
from rewardserve.backends import build_backend
from rewardserve.config import Settings

from ..conftest import LiveServer

TOL = 1e-4
PROMPTS = [
    "hi",  # one token in the plain format
    [{"role": "user", "content": "how do i boil an egg ?"}],
    [
        {"role": "system", "content": "be good"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "what is a dog ?"},
    ],
    "the " * 70 + "dog ?",  # longer than max_length with any response: the oldest prompt tokens go
]
RESPONSES = [
    "ok",
    "boil the egg in water for 9 minutes .",
    "a dog is good",
    "the " * 10,
    "a " * 90 + "good world",
]  # the last one alone overflows: the start of the response goes


def _backend(path, share: bool | None, max_length: int = 64, **kw):
    cfg = {"kind": "sequence_classifier", "path": str(path), "max_length": max_length, "models": {"m": {}}, **kw}
    if share is not None:
        cfg["share_prompt_prefix"] = share
    settings = Settings(backbones={"bb": cfg})
    return build_backend("bb", settings.backbones["bb"], settings)


class Calls:
    """Input widths of the base model's forwards (a shared batch runs it twice: prefixes, then suffixes)."""

    def __init__(self, backend):
        self.shapes: list[tuple[int, int]] = []
        self.suffix_runs = 0  # forwards on top of a prefix cache (with a 4D mask)
        self.backend = backend

    def _record(self, module, args, kw) -> None:
        self.shapes.append(tuple((kw["input_ids"] if "input_ids" in kw else args[0]).shape))
        mask = kw.get("attention_mask")
        self.suffix_runs += mask is not None and mask.dim() == 4

    def __enter__(self):
        self.h = self.backend.model.model.register_forward_pre_hook(self._record, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.h.remove()


@pytest.fixture(scope="module", params=["dec_chat", "dec_plain"])
def pair(request, tiny):
    """(sharing, not sharing) backends on the same tiny decoder checkpoint."""
    return _backend(tiny[request.param], None), _backend(tiny[request.param], False)


def test_sharing_is_on_by_default_for_decoders_and_off_for_encoders(tiny, pair):
    share, plain = pair
    assert share.shares_prefix and not plain.shares_prefix
    assert share.model_info()["m"].extra["share_prompt_prefix"] is True
    enc = _backend(tiny["enc_cls"], None)
    assert not enc.shares_prefix and enc.encode("hi", "ok").prefix_len == 0
    with pytest.raises(ValueError, match="share_prompt_prefix is not possible"):
        _backend(tiny["enc_cls"], True)


def test_same_reward_with_and_without_sharing_on_mixed_groups_with_truncation(pair):
    share, plain = pair
    encs = [share.encode(p, r) for p in PROMPTS for r in RESPONSES]
    # the cases are really there: left-truncated prompts, responses cut at their start (nothing left
    # to share), and a prompt whose truncated items no longer share the group's prefix
    assert any(e.truncated and e.prefix_len > 0 for e in encs)
    assert any(e.truncated and e.prefix_len == 0 for e in encs)
    truncated_prompt = [e.prefix_len for e in encs[3 * len(RESPONSES) : 4 * len(RESPONSES)] if e.prefix_len]
    assert len(set(truncated_prompt)) > 1
    alone = np.concatenate([plain.forward([e]) for e in encs])
    assert np.std(alone) > 0
    for order in (encs, encs[::-1], encs[1::2] + encs[::2]):
        with Calls(share) as calls:
            got = share.forward(order)
        assert calls.suffix_runs >= 1 and calls.shapes[0][0] < len(order)  # prefixes ran once per group
        want = np.concatenate([plain.forward([e]) for e in order])
        assert np.max(np.abs(got - want)) <= TOL
        assert np.max(np.abs(plain.forward(order) - want)) <= TOL


def test_one_token_prompts_groups_of_one_and_one_group(pair):
    share, plain = pair
    cases = {
        "one prompt, G responses": [share.encode("hi", r) for r in RESPONSES[:4]],
        "groups of one": [share.encode(p, "a dog is good") for p in PROMPTS[:3]],
        "one group and singletons": [share.encode("hi", r) for r in RESPONSES[:3]] + [share.encode(PROMPTS[2], "ok")],
        "same response, different prompts": [share.encode(p, "ok") for p in PROMPTS[:3]] * 2,
    }
    for name, encs in cases.items():
        want = np.concatenate([plain.forward([e]) for e in encs])
        with Calls(share) as calls:
            got = share.forward(encs)
        assert np.max(np.abs(got - want)) <= TOL, name
        groups = {tuple(e.input_ids[: e.prefix_len]) for e in encs}
        assert (calls.suffix_runs == 0) == (len(groups) == len(encs)), name  # groups of one: one plain forward
    if not share.uses_chat_template:  # the plain format: "hi" is one token, shared by every item
        assert share.encode("hi", "ok world").prefix_len == 1


def test_suffix_chunks_padding_multiples_and_lone_items(pair):
    share, plain = pair
    assert share.max_padding_ratio == 0.2  # the CPU padding cap
    encs = [share.encode(PROMPTS[1], r) for r in RESPONSES[:4]] + [share.encode(PROMPTS[2], r) for r in RESPONSES[:2]]
    want = np.concatenate([plain.forward([e]) for e in encs])
    runs = {}
    for cap in (1.0, 0.2, 0.0):
        for multiple in (1, 8, 16):
            share.pad_multiple, share.max_padding_ratio = multiple, cap
            try:
                with Calls(share) as calls:
                    got = share.forward(encs)
            finally:
                share.pad_multiple, share.max_padding_ratio = 8, 0.2
            assert np.max(np.abs(got - want)) <= TOL, (cap, multiple)
            runs[cap] = calls.suffix_runs
    assert runs[1.0] == 1 < runs[0.2] <= runs[0.0]  # no cap: one suffix forward; a cap: chunks of similar length
    assert np.max(np.abs(share.forward(encs[:1]) - want[:1])) <= TOL


def _server_settings(tiny, tmp_path, share: bool) -> Settings:
    return Settings(
        references={"store": f"sqlite:///{tmp_path / f'refs-{share}.db'}"},
        batching={"max_wait_ms": 30, "forward_workers": 1},
        backbones={
            "dec": {
                "kind": "sequence_classifier",
                "path": str(tiny["dec_chat"]),
                "max_length": 64,
                "share_prompt_prefix": share,
                "models": {"rm": {"transform": "identity"}},
            }
        },
    )


def test_live_server_same_rewards_one_request_per_group_and_one_request_per_item(tiny, tmp_path):
    items = [{"prompt": p, "response": r} for p in PROMPTS for r in RESPONSES]

    async def singles(url: str) -> list[float]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            rs = await asyncio.gather(*(c.post("/v1/score", json={"items": [it]}) for it in items))
        return [r.json()["results"][0]["raw"]["rm"] for r in rs]

    got = {}
    for share in (True, False):
        with LiveServer(create_app(_server_settings(tiny, tmp_path, share))) as srv:
            backbone = srv.state.registry.backbones["dec"]
            batcher = backbone.batcher
            assert backbone.backend.shares_prefix is share and batcher.shares_prefix is share
            assert httpx.get(f"{srv.url}/v1/models").status_code == 200
            with Calls(backbone.backend) as calls:
                # TRL / verl: one request with every prompt's group
                body = httpx.post(f"{srv.url}/v1/score", json={"items": items}, timeout=60).json()
                one = [res["raw"]["rm"] for res in body["results"]]
                # OpenRLHF: one request per item, all at once
                before = batcher.forwards
                many = asyncio.run(singles(srv.url))
                got[share] = (one, many, batcher.forwards - before)
            assert (calls.suffix_runs > 0) is share  # with sharing, batches ran their prompts once
    want = got[False][0]
    for share in (True, False):
        one, many, forwards = got[share]
        assert np.max(np.abs(np.array(one) - want)) <= TOL
        assert np.max(np.abs(np.array(many) - want)) <= TOL
        assert forwards < len(items)  # the single-item requests were batched
