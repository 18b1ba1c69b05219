"""``judge``: a causal LM asked a yes/no question about a response; ``raw = log P(Yes) − log P(No)``.

Input (per model = per question; docs/judges.md): the model's chat template over the conversation's
turns as they are, then one more user turn whose content is ``template`` filled with ``{response}``
and ``{question}`` (default ``DEFAULT_TEMPLATE``), then the template's generation prompt. A template
that uses ``{conversation}`` gets the conversation rendered as plain text inside that one user turn
instead (and then no prompt prefix is shared). Chat templates that refuse two user turns in a row
(Llama-2, Mistral, Gemma) get the judge turn appended to the conversation's last user turn. Templates
are Python format strings from the operator's config only (fields checked at load), never Jinja and
never from a request; the model's own Jinja chat template comes with its tokenizer.

Score: at the next-token position, ``raw = logsumexp(logits[yes ids]) − logsumexp(logits[no ids])``
where the ids are the single-token spellings among ``yes_tokens`` / ``no_tokens`` (the full-vocabulary
normaliser cancels). The yes/no rows of the output embedding (the tied input embedding where the
model ties them) are gathered once at load and applied to the final hidden state in float32, so no
full-vocabulary logits are computed: the head has the shape of a sequence classifier's score head and
the forward reuses that path (``prefix.py``). With reference 0, ``log σ(raw) = log P(Yes | Yes or No)``.

Several questions on one backbone share the LM. Each (item, question) is one sequence; in a batch the
sequences either share a GRPO group's tokens before the response (the conversation and the opening of
the judge's turn: everything the template puts before ``{response}``) or,
with several questions, share each item's conversation + response across its questions (the question
comes after the response in the default template); ``forward`` takes whichever computes fewer
tokens (``prefix.computed_tokens``), and a plain padded forward when neither shares. Questions with
different yes/no token sets run as separate sets of sequences (one head each).

Truncation keeps the end: whole tokens are cut from the left (the oldest turns, then the start of the
response), the same number for every question of an item, so the question and the generation prompt
always stay.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rewardclient.protocol import Prompt

from ..config import (
    DEFAULT_NO_TOKENS,
    DEFAULT_TEMPLATE,
    DEFAULT_YES_TOKENS,
    TEMPLATE_FIELDS,
    JudgeBackboneConfig,
    JudgeModelConfig,
    check_template,
    template_fields,
)
from . import prefix
from .base import DTYPES, Backend, Encoded, ModelInfo, collate, padded_width, resolve_device, weights_digest
from .formatting import render_plain

if TYPE_CHECKING:
    from ..config import Settings

__all__ = [  # the judge's configuration lives in config.py (no torch there); re-exported here
    "DEFAULT_NO_TOKENS",
    "DEFAULT_TEMPLATE",
    "DEFAULT_YES_TOKENS",
    "TEMPLATE_FIELDS",
    "JudgeBackboneConfig",
    "JudgeBackend",
    "JudgeEncoded",
    "JudgeModelConfig",
    "check_template",
    "template_fields",
]

_SENTINEL = "\u2063rewardserve-response\u2063"  # marks where the response goes when finding the shared prefix


@dataclass(slots=True)
class JudgeEncoded(Encoded):
    """An item for every question of a judge backbone: ``input_ids`` are the tokens all its questions
    share (the conversation first: ``prefix_len`` of them), ``tails[q]`` the rest of question q's
    sequence. ``length`` counts every token the item's sequences add (the batcher's budget)."""

    tails: list[list[int]] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.input_ids) + sum(len(t) for t in self.tails)

    @property
    def longest(self) -> int:
        return len(self.input_ids) + max((len(t) for t in self.tails), default=0)


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def single_token_ids(tokenizer: Any, spellings: Sequence[str]) -> dict[str, int]:
    """The spellings that are exactly one (non-unknown) token, with their ids (an id once)."""
    out: dict[str, int] = {}
    unk = getattr(tokenizer, "unk_token_id", None)
    for s in spellings:
        ids = tokenizer(s, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and ids[0] != unk and ids[0] not in out.values():
            out[s] = ids[0]
    return out


class YesNoHead(torch.nn.Module):
    """``raw = logsumexp(h·W_yes) − logsumexp(h·W_no)`` in float32 over the gathered output-embedding
    rows (with the LM head's bias and the model's logit scaling / soft-capping where it has them).
    Maps (n, hidden) to (n, 1), like a sequence classifier's score head."""

    weight: torch.Tensor  # (yes + no ids, hidden), float32
    bias: torch.Tensor

    def __init__(self, lm: Any, yes_ids: Sequence[int], no_ids: Sequence[int]):
        super().__init__()
        out = lm.get_output_embeddings()
        weight = out.weight.detach()
        bias = getattr(out, "bias", None)
        self.n_yes = len(yes_ids)
        ids = torch.tensor([*yes_ids, *no_ids], dtype=torch.long, device=weight.device)
        self.register_buffer("weight", weight.index_select(0, ids).float().clone())
        b = bias.detach().index_select(0, ids).float().clone() if bias is not None else torch.zeros(len(ids))
        self.register_buffer("bias", b.to(weight.device))
        cfg = lm.config
        # Cohere: logits × logit_scale; Granite: logits ÷ logits_scaling; Gemma-2/3: tanh soft-capping
        self.scale = float(getattr(cfg, "logit_scale", None) or 1.0) / float(
            getattr(cfg, "logits_scaling", None) or 1.0
        )
        self.softcap = getattr(cfg, "final_logit_softcapping", None)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = torch.nn.functional.linear(hidden.float(), self.weight, self.bias) * self.scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        yes = torch.logsumexp(logits[..., : self.n_yes], dim=-1)
        no = torch.logsumexp(logits[..., self.n_yes :], dim=-1)
        return (yes - no).unsqueeze(-1)


class _HeadedLM:
    """The shape ``prefix.shared_forward`` reads: a base model under ``base_model_prefix`` and a
    ``score`` head (here one question set's yes/no head)."""

    base_model_prefix = "model"

    def __init__(self, base: Any, score: torch.nn.Module, config: Any):
        self.model, self.score, self.config = base, score, config


@dataclass(frozen=True)
class _Question:
    name: str
    question: str
    template: str
    yes: dict[str, int]
    no: dict[str, int]
    config: JudgeModelConfig

    @property
    def inline_conversation(self) -> bool:
        return "conversation" in template_fields(self.template)


class JudgeBackend(Backend):
    """A causal LM serving one judge model per configured question (columns in ``models`` order)."""

    def __init__(
        self,
        name: str,
        models: Mapping[str, JudgeModelConfig],
        path: str,
        device: str = "cpu",
        dtype: str = "float32",
        max_length: int = 1024,
        revision: str | None = None,
        trust_remote_code: bool = False,
        pad_to_multiple_of: int = 8,
        share_prompt_prefix: bool | None = None,
        max_padding_ratio: float = 1.0,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not models:
            raise ValueError("a judge backbone needs at least one model (question)")
        self.name, self.source = name, path
        self.pad_multiple = pad_to_multiple_of
        self.device, self.dtype = resolve_device(device), DTYPES[dtype]
        self.tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
        self.tokenizer.model_max_length = 1 << 30  # truncation is ours; no length warnings
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"{path}: a judge needs a tokenizer with a chat template")
        lm: Any = AutoModelForCausalLM.from_pretrained(
            path, revision=revision, use_safetensors=True, trust_remote_code=trust_remote_code, dtype=self.dtype
        )
        lm = lm.to(self.device).eval()
        self.architecture = type(lm).__name__
        self.base = getattr(lm, lm.base_model_prefix)
        self.questions: list[_Question] = []
        for m, mc in models.items():
            yes, no = single_token_ids(self.tokenizer, mc.yes_tokens), single_token_ids(self.tokenizer, mc.no_tokens)
            for kind, got, asked in (("yes", yes, mc.yes_tokens), ("no", no, mc.no_tokens)):
                if not got:
                    raise ValueError(
                        f"model {m!r}: none of {kind}_tokens {asked} is a single token of {path}'s tokenizer"
                    )
            if set(yes.values()) & set(no.values()):
                raise ValueError(f"model {m!r}: yes_tokens and no_tokens share a token id")
            self.questions.append(_Question(m, mc.question, mc.turn_template, yes, no, mc))
        # one head per distinct (yes ids, no ids): questions with the same set run in one forward
        self._head_keys: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        self._heads: list[_HeadedLM] = []
        self._head_of: list[int] = []
        for q in self.questions:
            key = (tuple(q.yes.values()), tuple(q.no.values()))
            if key not in self._head_keys:
                self._head_keys.append(key)
                self._heads.append(_HeadedLM(self.base, YesNoHead(lm, *key).to(self.device), lm.config))
            self._head_of.append(self._head_keys.index(key))
        del lm  # only the base model and the gathered rows stay (an untied LM head is freed)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        limit = getattr(self._heads[0].config, "max_position_embeddings", None) or max_length
        self.max_length = min(max_length, limit)
        self._merge_judge_turn = not self._accepts_two_user_turns()
        why_not = prefix.supports_sharing(self._heads[0])
        if share_prompt_prefix and why_not:
            raise ValueError(f"{path}: share_prompt_prefix is not possible with this model: {why_not}")
        self.shares_prefix = why_not is None if share_prompt_prefix is None else share_prompt_prefix
        self.max_padding_ratio = max_padding_ratio
        weights = weights_digest(path) if Path(path).is_dir() else (revision or "main")
        self.revisions = {q.name: f"{weights}-{self._question_digest(q)}" for q in self.questions}
        for q in self.questions:  # the fixed part of each question's input must leave room for a response
            e = self._encode_one(q, "x", "")
            if len(e) >= self.max_length:
                raise ValueError(
                    f"model {q.name!r}: the judge's template and question alone take {len(e)} tokens, "
                    f"max_length is {self.max_length}"
                )

    @classmethod
    def from_config(cls, name: str, cfg: JudgeBackboneConfig, settings: Settings) -> JudgeBackend:
        """The backend of backbone ``name`` (paths resolved against the config file)."""
        return cls(
            name,
            models=cfg.models,
            path=settings.resolve_path(cfg.path),
            device=cfg.device,
            dtype=cfg.dtype,
            max_length=cfg.max_length,
            revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code,
            pad_to_multiple_of=cfg.pad_to_multiple_of,
            share_prompt_prefix=cfg.share_prompt_prefix,
            max_padding_ratio=(cfg.batching or settings.batching).padding_ratio_for(cfg.device),
        )

    # -- what the service reads --------------------------------------------------------------------
    @property
    def model_names(self) -> list[str]:
        return [q.name for q in self.questions]

    def model_info(self) -> dict[str, ModelInfo]:
        return {
            q.name: ModelInfo(
                name=q.name,
                kind="judge",
                source=self.source,
                revision=self.revisions[q.name],
                extra={
                    "architecture": self.architecture,
                    "question": q.question,
                    "template": q.template,
                    "yes_tokens": list(q.yes),
                    "no_tokens": list(q.no),
                    "share_prompt_prefix": self.shares_prefix,
                },
            )
            for q in self.questions
        }

    def batch_width(self, batch: list[Encoded]) -> int:
        lengths = [e.longest if isinstance(e, JudgeEncoded) else e.length for e in batch]
        return padded_width(lengths, self.pad_multiple, self.max_length)

    # -- encoding ------------------------------------------------------------------------------------
    def render(self, q: _Question, prompt: Prompt, response: str) -> str:
        """The judge's input text for question ``q`` (see the module's docstring)."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
        if q.inline_conversation:
            turn = q.template.format(response=response, question=q.question, conversation=render_plain(prompt))
            return self._chat([{"role": "user", "content": turn}])
        turn = q.template.format(response=response, question=q.question)
        if self._merge_judge_turn and messages and messages[-1]["role"] == "user":
            last = messages[-1]
            return self._chat([*messages[:-1], {**last, "content": f"{last['content']}\n\n{turn}"}])
        return self._chat([*messages, {"role": "user", "content": turn}])

    def before_response(self, q: _Question, prompt: Prompt) -> str:
        """The text the judge's input has before the response: the same for every response to
        ``prompt`` (a GRPO group shares its tokens); empty when the template hides where it is."""
        probe = self.render(q, prompt, _SENTINEL)
        at = probe.find(_SENTINEL)
        return probe[:at] if at >= 0 else ""

    def encode(self, prompt: Prompt, response: str) -> JudgeEncoded:
        seqs: list[list[int]] = []
        conv_len = 1 << 30  # tokens before the response that every question's sequence starts with
        before_ids: dict[str, list[int]] = {}
        for q in self.questions:
            text = self.render(q, prompt, response)
            ids = self._ids(text)
            before = self.before_response(q, prompt) if self.shares_prefix else ""
            if before and text.startswith(before):
                if before not in before_ids:
                    before_ids[before] = self._ids(before)
                b = before_ids[before]
                # its last token may merge with the response's first characters: not shared
                conv_len = min(conv_len, common_prefix_len(b, ids), len(b) - 1)
            else:
                conv_len = 0
            seqs.append(ids)
        common = min((common_prefix_len(seqs[0], s) for s in seqs[1:]), default=len(seqs[0]))
        cut = max(0, max(len(s) for s in seqs) - self.max_length)
        truncated = cut > 0
        if cut >= common:  # the questions differ before the cut (a template with the question first)
            seqs = [s[max(0, len(s) - self.max_length) :] for s in seqs]
            common = cut = conv_len = 0
        shared_ids = seqs[0][cut:common]
        prefix_len = 0
        if self.shares_prefix and conv_len:
            prefix_len = max(0, min(conv_len - cut, len(shared_ids) + min(len(s) - common for s in seqs) - 1))
        return JudgeEncoded(
            input_ids=shared_ids,
            tails=[s[common:] for s in seqs],
            truncated=truncated,
            prefix_len=prefix_len,
            response_chars=len(response),
        )

    def _encode_one(self, q: _Question, prompt: Prompt, response: str) -> list[int]:
        return self._ids(self.render(q, prompt, response))

    def _ids(self, text: str) -> list[int]:
        # the rendered template carries its own special tokens (BOS …), as apply_chat_template's tokenize does
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _chat(self, messages: list[dict[str, Any]], generation: bool = True) -> str:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        assert isinstance(text, str)
        return text

    def _accepts_two_user_turns(self) -> bool:
        try:
            self._chat([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
        except Exception:  # Jinja's raise_exception: roles must alternate
            return False
        return True

    @staticmethod
    def _question_digest(q: _Question) -> str:
        spec = json.dumps([q.question, q.template, sorted(q.yes), sorted(q.no)], ensure_ascii=False)
        return hashlib.sha256(spec.encode()).hexdigest()[:8]

    # -- forward ----------------------------------------------------------------------------------------
    def forward(self, batch: list[Encoded]) -> np.ndarray:
        out = np.empty((len(batch), len(self.questions)))
        for h, head in enumerate(self._heads):
            cols = [q for q, hq in enumerate(self._head_of) if hq == h]
            seqs, where = self._sequences(batch, cols)
            out[tuple(np.array(where).T)] = self._run(head, seqs)
        return out

    def _sequences(self, batch: list[Encoded], cols: list[int]) -> tuple[list[Encoded], list[tuple[int, int]]]:
        """One sequence per (item, question of ``cols``), keyed for sharing by whichever of the two
        groupings computes fewer tokens: the conversation (a GRPO group) or the item (its questions)."""
        by_prompt: list[Encoded] = []
        where: list[tuple[int, int]] = []
        item_keys: list[int] = []
        for i, e in enumerate(batch):
            tails = e.tails if isinstance(e, JudgeEncoded) else [[] for _ in self.questions]
            for q in cols:
                ids = e.input_ids + tails[q]
                by_prompt.append(Encoded(input_ids=ids, prefix_len=e.prefix_len))
                where.append((i, q))
                item_keys.append(min(len(e.input_ids), len(ids) - 1))
        if not self.shares_prefix or len(by_prompt) < 2:
            return by_prompt, where
        by_item = [Encoded(input_ids=s.input_ids, prefix_len=k) for s, k in zip(by_prompt, item_keys)]
        costs = []
        for seqs in (by_prompt, by_item):
            computed, _, shared = prefix.computed_tokens([(prefix.prefix_key(s), s.prefix_len, s.length) for s in seqs])
            costs.append(computed if shared else float("inf"))
        return (by_item if costs[1] < costs[0] else by_prompt), where

    def _run(self, head: _HeadedLM, seqs: list[Encoded]) -> np.ndarray:
        p = prefix.plan(seqs) if self.shares_prefix and len(seqs) > 1 else None
        if p is None:
            return self._plain(head, seqs)
        raw = np.empty(len(seqs))
        pad = self._pad_for(seqs)
        with torch.inference_mode():
            shared, values = prefix.shared_forward(
                head, seqs, p, pad, self.device, self.pad_multiple, self.max_length, self.max_padding_ratio
            )
        raw[shared] = values.float().cpu().double().numpy()
        if p.rest:
            raw[p.rest] = self._plain(head, [seqs[i] for i in p.rest])
        return raw

    def _plain(self, head: _HeadedLM, seqs: list[Encoded]) -> np.ndarray:
        width = padded_width([s.length for s in seqs], self.pad_multiple, self.max_length)
        t = collate(seqs, self.pad_id, self.device, width)
        with torch.inference_mode():
            hidden = self.base(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).last_hidden_state
            last = torch.tensor([s.length - 1 for s in seqs], device=hidden.device)
            raw = head.score(hidden[torch.arange(len(seqs), device=hidden.device), last])
        values: np.ndarray = raw.reshape(len(seqs)).cpu().double().numpy()
        return values

    def _pad_for(self, seqs: list[Encoded]) -> int:
        """A pad id that is no sequence's last token (the shared path reads each sequence at its
        rightmost non-pad token, which must be the generation prompt's last token)."""
        last = {s.input_ids[-1] for s in seqs}
        if self.pad_id not in last:
            return self.pad_id
        return next(i for i in range(len(last) + 1) if i not in last)
