"""Templated prompts parsed back into messages: every family's real chat template, rendered by a
real tokenizer, and a tokenizer's own template learned from probe renders."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from rewardclient import prompt_fingerprint
from rewardserve import prompt_formats as pf
from tests.chat_templates import SPECS, conversations, generated_ids, make_tokenizer, openrlhf_sample

SPEC_IDS = [s.name for s in SPECS]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat_templates")
    paths = {s.name: make_tokenizer(s, root / s.name) for s in SPECS}
    return {name: (AutoTokenizer.from_pretrained(p), p) for name, p in paths.items()}


def _cases():
    """(template, conversation, how the format is named); a house template only as tokenizer:<path>."""
    return [
        (s, i, how)
        for s in SPECS
        for i in range(len(conversations(s)))
        for how in (("auto", "family", "tokenizer") if s.family else ("tokenizer",))
    ]


def _assert_same_conversation(tok, parsed, messages, prompt):
    """The parsed prompt is the conversation: its last messages are the given ones, anything before
    them is a system message the template injected, and it renders back to the prompt exactly."""
    assert isinstance(parsed, list)
    assert parsed[len(parsed) - len(messages) :] == messages
    assert all(m["role"] == "system" for m in parsed[: len(parsed) - len(messages)])
    assert tok.apply_chat_template(parsed, tokenize=False, add_generation_prompt=True) == prompt


@pytest.mark.parametrize("spec,k,how", _cases(), ids=[f"{s.name}-{k}-{how}" for s, k, how in _cases()])
def test_openrlhf_sample_parses_to_the_conversation(tokenizers, spec, k, how):
    tok, path = tokenizers[spec.name]
    messages, response = conversations(spec)[k]
    query, prompt = openrlhf_sample(tok, messages, response, pad=2)
    fmt = {"auto": "auto", "family": spec.family, "tokenizer": f"tokenizer:{path}"}[how]
    out = pf.normalise(prompt, pf.split_query(query, prompt), pf.resolve_format(fmt))
    _assert_same_conversation(tok, out.prompt, messages, prompt)
    assert out.response == response and out.warning is None
    assert out.format == (spec.family if how == "auto" else pf.resolve_format(fmt).name)


def test_injected_system_message_is_part_of_the_conversation(tokenizers):
    tok, _ = tokenizers["smollm2"]
    messages = [{"role": "user", "content": "How do I boil an egg?"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    out = pf.normalise(prompt, "Boil it.<|im_end|>", "auto")
    assert len(out.prompt) == 2 and out.prompt[0]["role"] == "system" and out.prompt[0]["content"] in prompt
    assert prompt_fingerprint(out.prompt) != prompt_fingerprint(messages)  # the system message counts
    assert prompt_fingerprint(out.prompt) == prompt_fingerprint(pf.normalise(prompt, "", "chatml").prompt)


@pytest.mark.parametrize("spec", [s for s in SPECS if s.family], ids=lambda s: s.name)
def test_detects_each_family(tokenizers, spec):
    tok, _ = tokenizers[spec.name]
    for messages, _ in conversations(spec):
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert pf.detect_family(prompt).name == spec.family


def test_house_template_is_not_detected_but_learned(tokenizers):
    tok, path = tokenizers["custom"]
    messages, response = conversations(SPECS[-1])[1]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert pf.detect_family(prompt) is None
    assert pf.normalise(prompt, response, "auto") == pf.Normalised(prompt, response, "plain")
    learned = pf.resolve_format(f"tokenizer:{path}")
    assert learned.sys_start is not None and learned.generation.endswith("assistant: ")
    assert pf.normalise(prompt, response + "<|/turn|>", learned).prompt == messages


def test_verl_response_is_left_as_is(tokenizers):
    tok, _ = tokenizers["llama3"]
    messages, response = conversations(SPECS[1])[0]
    _, r_ids = generated_ids(tok, messages, response)
    assert tok.decode(r_ids, skip_special_tokens=True) == response
    assert pf.normalise(messages, response, "auto") == pf.Normalised(messages, response, "plain")


def test_plain_strings_stay_as_they_are():
    for text in ["How do I boil an egg?", "Use <b>bold</b> and a | pipe.", ""]:
        assert pf.normalise(text, "Boil it.</s>", "auto") == pf.Normalised(text, "Boil it.</s>", "plain")
    assert pf.normalise("<|im_start|>user\nHi<|im_end|>\n", "x", "plain").prompt == "<|im_start|>user\nHi<|im_end|>\n"


@pytest.mark.parametrize(
    "text",
    [
        "<|im_start|>user\nHi there",  # an unterminated turn
        "Tell me about <|im_start|> tokens",  # a marker inside plain text
        "[INST] unterminated instruction",
        "<start_of_turn>user\nHi<end_of_turn>\ntrailing text",
    ],
)
def test_templated_looking_but_unparsable_is_plain_with_a_warning(text):
    out = pf.normalise(text, "reply<|im_end|>", "auto")
    assert out.prompt == text and out.response == "reply<|im_end|>" and out.format == "plain"
    assert "does not parse" in out.warning and "plain text" in out.warning


def test_a_named_family_that_does_not_match_warns(tokenizers):
    tok, _ = tokenizers["llama3"]
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    out = pf.normalise(prompt, "x", pf.resolve_format("chatml"))
    assert out.prompt == prompt and "chatml" in out.warning


@pytest.mark.parametrize(
    "response,family,expected",
    [
        ("Paris.<|im_end|>", "chatml", "Paris."),
        ("Paris.<|im_end|>\n<|endoftext|><|endoftext|>", "chatml", "Paris."),
        ("Paris.", "chatml", "Paris."),
        ("Paris.\n", "chatml", "Paris.\n"),  # whitespace of the response itself stays
        (" Paris. </s><unk><unk>", "llama2", "Paris."),
        ("Paris.<|eot_id|><|end_of_text|>", "llama3", "Paris."),
        ("Paris.<end_of_turn>\n<eos><pad>", "gemma", "Paris."),
        ("Paris.<|end|>\n<|endoftext|>", "phi3", "Paris."),
        ("Paris.</s>\n", "zephyr", "Paris."),
        ("Paris.</s>", "chatml", "Paris.</s>"),  # another family's markup is text
    ],
)
def test_clean_response(response, family, expected):
    assert pf.FAMILIES[family].clean_response(response) == expected


@pytest.mark.parametrize("name", [s.name for s in SPECS])
def test_split_query_finds_the_response_after_the_decoded_prompt(tokenizers, name):
    tok, _ = tokenizers[name]
    spec = next(s for s in SPECS if s.name == name)
    for messages, response in conversations(spec):
        query, prompt = openrlhf_sample(tok, messages, response)
        assert query.startswith(prompt) != spec.sentencepiece  # SentencePiece decoding adds spaces
        _, r_ids = generated_ids(tok, messages, response)
        assert pf.split_query(query, prompt).strip() == tok.decode(r_ids, skip_special_tokens=False).strip()


def test_split_query_rejects_another_prompt():
    assert pf.split_query("<s>[INST] Hi [/INST] Hello</s>", "<s>[INST] Ho [/INST]") is None
    assert pf.split_query("<s> [INST] Hi [/INST]", "<s>[INST] Hi [/INST]") == ""
    assert pf.split_query("short", "a longer prompt") is None
    assert pf.split_query("prompt reply", "prompt") == " reply"


def test_format_names():
    for ok in [
        "auto",
        "plain",
        "chatml",
        "mistral",
        "tulu",
        "tokenizer:/models/x",
        "tokenizer:Qwen/Qwen2.5-0.5B-Instruct",
    ]:
        assert pf.check_format_name(ok) == ok
    for bad in ["", "chat-ml", "tokenizer:", "tokenizer:  ", "AUTO"]:
        with pytest.raises(pf.PromptFormatError, match="unknown prompt_format"):
            pf.check_format_name(bad)


def test_tokenizer_format_errors(tmp_path):
    with pytest.raises(pf.PromptFormatError, match="cannot be loaded"):
        pf.resolve_format(f"tokenizer:{tmp_path / 'missing'}")
    from rewardlab.tiny_models import _word_tokenizer

    _word_tokenizer(chat_template=False).save_pretrained(tmp_path / "no_template")
    with pytest.raises(pf.PromptFormatError, match="no chat template"):
        pf.resolve_format(f"tokenizer:{tmp_path / 'no_template'}")


@pytest.mark.parametrize(
    "prompt,response",
    [
        ("[INST] hi [/INST]" + " " * 200_000, "ok"),
        ("<|user|>\n" + "\n" * 200_000, "ok"),
        ("<|im_start|>user\n" + "a" * 200_000, "ok"),
        ("[INST] hi [/INST]", "a" + "</s> " * 50_000),
        ("<|im_start|>user\nhi<|im_end|>\n", "a" + "<|im_end|>\n" * 20_000),
    ],
)
def test_long_inputs_take_linear_time(prompt, response):
    """Prompts and responses up to max_text_chars: no regex or strip loop goes quadratic."""
    import time

    t0 = time.perf_counter()
    pf.normalise(prompt, response, "auto")
    pf.split_query(prompt + response, prompt)
    assert time.perf_counter() - t0 < 2.0


def test_config_names_the_key_of_an_unknown_prompt_format():
    from rewardserve.config import ConfigError, load_settings

    assert load_settings().prompt_format == "auto" and load_settings().openrlhf.prompt_format is None
    assert (
        load_settings(openrlhf={"prompt_format": "tokenizer:/models/policy"}).openrlhf.prompt_format
        == "tokenizer:/models/policy"
    )
    with pytest.raises(ConfigError, match=r"prompt_format: .*unknown prompt_format 'chat-ml'"):
        load_settings(prompt_format="chat-ml")
    with pytest.raises(ConfigError, match=r"openrlhf\.prompt_format: .*unknown prompt_format 'bogus'"):
        load_settings(openrlhf={"prompt_format": "bogus"})
