"""``judge``: a causal LM asked a yes/no question about a response; ``raw = log P(Yes) − log P(No)``.

What the model reads and how long inputs are cut: ``judge_input.py``. The score (``judge_head.py``):
at the next-token position, ``raw = logsumexp(logits[yes ids]) − logsumexp(logits[no ids])`` where
the ids are the single-token spellings among ``yes_tokens`` / ``no_tokens`` (the full-vocabulary
normaliser cancels). The yes/no rows of the output embedding (the tied input embedding where the
model ties them) are gathered once at load and applied to the final hidden state in float32, so no
full-vocabulary logits are computed: the head has the shape of a sequence classifier's score head and
the forward reuses that path (``prefix.py``). With reference 0, ``log σ(raw) = log P(Yes | Yes or No)``.

Several questions on one backbone share the LM. Each (item, question) is one sequence; in a batch the
sequences either share a GRPO group's tokens before the response (the conversation and the judge
turn's text up to ``{response}``: with the default template, the question too) or, with several
questions, share each item's tokens common to its questions (with a template that puts the question
after the response, the conversation and the response); ``forward`` takes whichever computes fewer
tokens (``prefix.computed_tokens``), and a plain padded forward when neither shares. Questions with
different yes/no token sets run as separate sets of sequences (one head each).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
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
from .judge_head import HeadedLM, YesNoHead, single_token_ids
from .judge_input import JudgeEncoded, JudgeInput, JudgeQuestion

if TYPE_CHECKING:
    from ..config import Settings

__all__ = [  # the judge's configuration lives in config/judge.py (no torch there); re-exported here
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
        self.questions: list[JudgeQuestion] = []
        for m, mc in models.items():
            yes, no = single_token_ids(self.tokenizer, mc.yes_tokens), single_token_ids(self.tokenizer, mc.no_tokens)
            for kind, got, asked in (("yes", yes, mc.yes_tokens), ("no", no, mc.no_tokens)):
                if not got:
                    raise ValueError(
                        f"model {m!r}: none of {kind}_tokens {asked} is a single token of {path}'s tokenizer"
                    )
            if set(yes.values()) & set(no.values()):
                raise ValueError(f"model {m!r}: yes_tokens and no_tokens share a token id")
            self.questions.append(JudgeQuestion(m, mc.question, mc.turn_template, yes, no, mc))
        # one head per distinct (yes ids, no ids): questions with the same set run in one forward
        self._head_keys: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        self._heads: list[HeadedLM] = []
        self._head_of: list[int] = []
        for q in self.questions:
            key = (tuple(q.yes.values()), tuple(q.no.values()))
            if key not in self._head_keys:
                self._head_keys.append(key)
                self._heads.append(HeadedLM(self.base, YesNoHead(lm, *key).to(self.device), lm.config))
            self._head_of.append(self._head_keys.index(key))
        attn = getattr(lm.config, "_attn_implementation", None) or "eager"
        self.cost_model = prefix.CostModel.for_model(lm.config, self.dtype, attn)  # the batcher's memory budget
        del lm  # only the base model and the gathered rows stay (an untied LM head is freed)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        limit = getattr(self._heads[0].config, "max_position_embeddings", None) or max_length
        self.max_length = min(max_length, limit)
        self.input = JudgeInput(self.tokenizer, self.questions, self.max_length)
        why_not = prefix.supports_sharing(self._heads[0])
        if share_prompt_prefix and why_not:
            raise ValueError(f"{path}: share_prompt_prefix is not possible with this model: {why_not}")
        self.shares_prefix = why_not is None if share_prompt_prefix is None else share_prompt_prefix
        self.max_padding_ratio = max_padding_ratio
        weights = weights_digest(path) if Path(path).is_dir() else (revision or "main")
        self.revisions = {q.name: f"{weights}-{self._question_digest(q)}" for q in self.questions}
        for q in self.questions:  # the fixed part of each question's input must leave room for a response
            e = self.input.ids(self.input.render(q, "x", ""))
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

    # -- encoding (judge_input.py) ------------------------------------------------------------------
    def render(self, q: JudgeQuestion, prompt: Prompt, response: str) -> str:
        return self.input.render(q, prompt, response)

    def encode(self, prompt: Prompt, response: str) -> JudgeEncoded:
        return self.input.encode(prompt, response, self.shares_prefix)

    @staticmethod
    def _question_digest(q: JudgeQuestion) -> str:
        spec = json.dumps([q.question, q.template, sorted(q.yes), sorted(q.no)], ensure_ascii=False)
        return hashlib.sha256(spec.encode()).hexdigest()[:8]

    # -- forward ----------------------------------------------------------------------------------------
    def forward(self, batch: list[Encoded]) -> np.ndarray:
        out = np.empty((len(batch), len(self.questions)))
        for h, head in enumerate(self._heads):
            cols = [q for q, hq in enumerate(self._head_of) if hq == h]
            seqs, where = self.sequences(batch, cols)
            out[tuple(np.array(where).T)] = self._run(head, seqs)
        return out

    def sequences(self, batch: list[Encoded], cols: list[int]) -> tuple[list[Encoded], list[tuple[int, int]]]:
        """One sequence per (item, question of ``cols``), with its (item, column), keyed for sharing by
        whichever of the two groupings computes fewer tokens: the conversation (a GRPO group) or the
        item (its questions). ``forward`` runs these; the judge bench counts their tokens."""
        by_prompt: list[Encoded] = []
        where: list[tuple[int, int]] = []
        item_keys: list[int] = []
        for i, e in enumerate(batch):
            tails = e.tails if isinstance(e, JudgeEncoded) else [[] for _ in self.questions]
            lens = e.prefix_lens if isinstance(e, JudgeEncoded) else [e.prefix_len for _ in self.questions]
            for q in cols:
                ids = e.input_ids + tails[q]
                by_prompt.append(Encoded(input_ids=ids, prefix_len=lens[q]))
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

    def _run(self, head: HeadedLM, seqs: list[Encoded]) -> np.ndarray:
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

    def _plain(self, head: HeadedLM, seqs: list[Encoded]) -> np.ndarray:
        width = padded_width([s.length for s in seqs], self.pad_multiple, self.max_length)
        t = collate(seqs, self.pad_id, self.device, width)
        with torch.inference_mode():
            hidden = self.base(input_ids=t["input_ids"], attention_mask=t["attention_mask"], use_cache=False)
            hidden = hidden.last_hidden_state
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
