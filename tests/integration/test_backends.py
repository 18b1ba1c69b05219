"""Backends through the real from_pretrained path on tiny checkpoints saved to a temp dir."""

from __future__ import annotations

import numpy as np
import pytest

from rewardserve.backends import build_backend
from rewardserve.config import Settings

PROMPTS = [
    "hi",
    [{"role": "user", "content": "how do i boil an egg ?"}],
    [
        {"role": "system", "content": "be good"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "what is a dog ?"},
    ],
    "why " * 40,
]
RESPONSES = ["ok", "boil the egg in water for 9 minutes . " * 3, "a dog is good", "because " * 100]


def _backend(kind: str, path, models: dict, max_length: int = 128):
    settings = Settings(backbones={"bb": {"kind": kind, "path": str(path), "max_length": max_length, "models": models}})
    return build_backend("bb", settings.backbones["bb"], settings)


@pytest.fixture(scope="module")
def backends(tiny):
    return {
        "encoder_cls": _backend("sequence_classifier", tiny["enc_cls"], {"m": {}}),
        "decoder_chat": _backend("sequence_classifier", tiny["dec_chat"], {"m": {}}),
        "decoder_plain": _backend("sequence_classifier", tiny["dec_plain"], {"m": {}}),
        "encoder_head": _backend(
            "encoder_head", tiny["encoder"], {"a": {"head": str(tiny["head_a"])}, "b": {"head": str(tiny["head_b"])}}
        ),
    }


@pytest.mark.parametrize("name", ["encoder_cls", "decoder_chat", "decoder_plain", "encoder_head"])
def test_same_reward_alone_and_in_mixed_length_batches(backends, name):
    be = backends[name]
    encs = [be.encode(p, r) for p in PROMPTS for r in RESPONSES]
    lengths = {e.length for e in encs}
    assert len(lengths) > 5  # really mixed lengths
    alone = np.concatenate([be.forward([e]) for e in encs])
    batched = be.forward(encs)
    reversed_ = be.forward(encs[::-1])[::-1]
    assert alone.shape == (len(encs), len(be.model_names))
    assert np.max(np.abs(alone - batched)) <= 1e-4
    assert np.max(np.abs(alone - reversed_)) <= 1e-4
    assert np.all(np.isfinite(alone))
    assert np.std(alone[:, 0]) > 0  # inputs matter


def test_input_formats(backends):
    assert backends["decoder_chat"].uses_chat_template
    assert not backends["decoder_plain"].uses_chat_template
    assert not backends["encoder_cls"].is_decoder and backends["decoder_chat"].is_decoder
    tok = backends["decoder_chat"].tokenizer
    msgs = [{"role": "user", "content": "hello"}]
    e = backends["decoder_chat"].encode(msgs, "hi world")
    full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": "hi world"}], tokenize=False)
    assert tok.decode(e.input_ids) == tok.decode(tok(full, add_special_tokens=False)["input_ids"])
    infos = {k: b.model_info() for k, b in backends.items()}
    assert infos["decoder_chat"]["m"].extra["input_format"] == "chat_template"
    assert infos["decoder_plain"]["m"].extra["input_format"] == "plain_single"
    assert infos["encoder_cls"]["m"].extra["input_format"] == "text_pair"


@pytest.mark.parametrize("name", ["encoder_cls", "decoder_chat", "encoder_head"])
def test_truncation_keeps_the_end_of_the_response(backends, name):
    be = backends[name]
    tok = be.tokenizer
    # long prompt, short response: the prompt loses its oldest tokens, the response is whole
    e = be.encode("the " * 300 + "dog", "good cat")
    assert e.truncated and e.length <= be.max_length
    text = tok.decode(e.input_ids)
    assert "good cat" in text and "dog" in text
    # response alone too long: its start goes, its end stays
    e = be.encode("hello", "a " * 300 + "the good world")
    assert e.truncated and e.length <= be.max_length
    assert tok.decode(e.input_ids).rstrip().replace("</s>", "").replace("[SEP]", "").rstrip().endswith("good world")
    # short: untouched
    assert not be.encode("hello", "world").truncated


def test_encoder_head_runs_one_encoder_forward_for_all_heads(backends):
    be = backends["encoder_head"]
    calls = []
    handle = be.encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        out = be.forward([be.encode(p, r) for p in PROMPTS for r in RESPONSES])
    finally:
        handle.remove()
    assert len(calls) == 1
    assert out.shape[1] == 2 and not np.allclose(out[:, 0], out[:, 1])


def test_sequence_classifier_rejects_multi_label(tmp_path):
    from rewardlab import tiny_models

    path = tiny_models.make_encoder_classifier(tmp_path / "m", num_labels=3)
    with pytest.raises(ValueError, match="exactly one label"):
        _backend("sequence_classifier", path, {"m": {}})


@pytest.mark.parametrize("name", ["encoder_cls", "decoder_chat", "decoder_plain", "encoder_head"])
def test_batches_are_padded_to_a_multiple_of_8_without_changing_rewards(backends, name):
    be = backends[name]
    assert be.pad_multiple == 8  # the config default
    net = be.encoder if name == "encoder_head" else getattr(be.model, be.model.base_model_prefix)
    widths: list[int] = []
    hook = net.register_forward_pre_hook(
        lambda m, a, kw: widths.append((kw["input_ids"] if "input_ids" in kw else a[0]).shape[1]), with_kwargs=True
    )
    encs = [be.encode(p, r) for p in PROMPTS for r in RESPONSES]
    sharing, be.shares_prefix = be.shares_prefix, False  # plain batches here (shared ones: test_prefix_sharing.py)
    try:
        aligned = np.concatenate([be.forward(encs[i : i + 3]) for i in range(0, len(encs), 3)])
        be.pad_multiple = 1
        tight = np.concatenate([be.forward(encs[i : i + 3]) for i in range(0, len(encs), 3)])
    finally:
        be.pad_multiple, be.shares_prefix = 8, sharing
        hook.remove()
    groups = [encs[i : i + 3] for i in range(0, len(encs), 3)]
    longest = [max(e.length for e in g) for g in groups]
    assert len(groups[-1]) == 1  # 16 items: the last group is a lone item
    # padded to 8, except a lone item and where 8 would pass the model's longest input (128 here)
    assert widths[: len(groups)] == [
        min(-(-w // 8) * 8, be.max_length) if len(g) > 1 else w for g, w in zip(groups, longest)
    ]
    assert widths[len(groups) :] == longest
    assert any(w % 8 for w in longest[:-1])  # the check above is not vacuous
    assert np.max(np.abs(aligned - tight)) <= 1e-4
