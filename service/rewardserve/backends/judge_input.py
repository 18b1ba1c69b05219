"""What a judge reads: each question's input text and its tokens (docs/judges.md).

The model's chat template over the conversation's turns as they are, then one more user turn whose
content is the question's ``template`` filled with ``{question}`` and ``{response}`` (default
``DEFAULT_TEMPLATE``: the question first, so that it belongs to the prefix a GRPO group shares),
then the template's generation prompt. A template that uses ``{conversation}`` gets the conversation
rendered as plain text inside that one user turn instead. Chat templates that refuse two user turns
in a row (Llama-2, Mistral, Gemma) get the judge turn appended to the conversation's last user turn.
Templates are Python format strings from the operator's config only (fields checked at load), never
Jinja and never from a request; the model's own Jinja chat template comes with its tokenizer.

Truncation cuts whole tokens, the same number for every question of an item: from the left of the
conversation (the oldest turns first), then from the start of the response. The judge turn's fixed
text, the question and the generation prompt always stay. (A ``{conversation}`` template is cut from
the left only.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rewardclient.protocol import Prompt

from ..config import JudgeModelConfig, template_fields
from .base import Encoded
from .formatting import render_plain

_SENTINEL = "\u2063rewardserve-response\u2063"  # marks where the response goes when finding the shared prefix


@dataclass(frozen=True)
class JudgeQuestion:
    name: str
    question: str
    template: str
    yes: dict[str, int]
    no: dict[str, int]
    config: JudgeModelConfig

    @property
    def inline_conversation(self) -> bool:
        return "conversation" in template_fields(self.template)


@dataclass(slots=True)
class JudgeEncoded(Encoded):
    """An item for every question of a judge backbone: ``input_ids`` are the tokens all its questions
    share, ``tails[q]`` the rest of question q's sequence; ``prefix_lens[q]`` the leading tokens of
    question q's sequence that every response to the same conversation shares (``prefix_len`` is
    their minimum). ``length`` counts every token the item's sequences add (the batcher's budget)."""

    tails: list[list[int]] = field(default_factory=list)
    prefix_lens: list[int] = field(default_factory=list)

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


@dataclass(frozen=True)
class _Parts:
    """One question's tokens for one item, with ``before`` (tokens ahead of the response that do
    not depend on it) and ``conversation`` (tokens ahead of the judge turn's own text): both cut
    points, ``None`` where unknown."""

    ids: list[int]
    before: int | None
    conversation: int | None


class JudgeInput:
    """Renders and tokenizes (conversation, response) for each question of a judge backbone."""

    def __init__(self, tokenizer: Any, questions: Sequence[JudgeQuestion], max_length: int):
        self.tokenizer, self.questions, self.max_length = tokenizer, list(questions), max_length
        self.merge_judge_turn = not self._accepts_two_user_turns()

    def render(self, q: JudgeQuestion, prompt: Prompt, response: str) -> str:
        """The judge's input text for question ``q`` (see the module's docstring)."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
        if q.inline_conversation:
            turn = q.template.format(response=response, question=q.question, conversation=render_plain(prompt))
            return self.chat([{"role": "user", "content": turn}])
        turn = q.template.format(response=response, question=q.question)
        if self.merge_judge_turn and messages and messages[-1]["role"] == "user":
            last = messages[-1]
            return self.chat([*messages[:-1], {**last, "content": f"{last['content']}\n\n{turn}"}])
        return self.chat([*messages, {"role": "user", "content": turn}])

    def before_response(self, q: JudgeQuestion, prompt: Prompt) -> str:
        """The text the judge's input has before the response: the same for every response to
        ``prompt`` (a GRPO group shares its tokens); empty when the template hides where it is."""
        probe = self.render(q, prompt, _SENTINEL)
        at = probe.find(_SENTINEL)
        return probe[:at] if at >= 0 else ""

    def encode(self, prompt: Prompt, response: str, shares_prefix: bool) -> JudgeEncoded:
        parts = [self._parts(q, prompt, response) for q in self.questions]
        cut = max(0, max(len(p.ids) for p in parts) - self.max_length)
        seqs, befores = zip(*(self._truncate(p, cut) for p in parts))
        common = min((common_prefix_len(seqs[0], s) for s in seqs[1:]), default=len(seqs[0]))
        lens = [min(b or 0, len(s) - 1) if shares_prefix else 0 for s, b in zip(seqs, befores)]
        return JudgeEncoded(
            input_ids=seqs[0][:common],
            tails=[s[common:] for s in seqs],
            truncated=cut > 0,
            prefix_len=min(lens),
            response_chars=len(response),
            prefix_lens=lens,
        )

    def ids(self, text: str) -> list[int]:
        # the rendered template carries its own special tokens (BOS …), as apply_chat_template's tokenize does
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def chat(self, messages: list[dict[str, Any]], generation: bool = True) -> str:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        assert isinstance(text, str)
        return text

    def _parts(self, q: JudgeQuestion, prompt: Prompt, response: str) -> _Parts:
        text = self.render(q, prompt, response)
        ids = self.ids(text)
        before_text = self.before_response(q, prompt)
        if not before_text or not text.startswith(before_text):
            return _Parts(ids, None, None)
        b = self.ids(before_text)
        # its last token may merge with the response's first characters: not shared
        before = min(common_prefix_len(b, ids), len(b) - 1)
        if q.inline_conversation:
            return _Parts(ids, before, None)
        turn = q.template.format(response=_SENTINEL, question=q.question)
        opening = turn[: turn.find(_SENTINEL)].strip()
        at = before_text.rfind(opening) if opening else len(before_text)
        conversation = min(common_prefix_len(self.ids(before_text[:at]), ids), before) if at >= 0 else None
        return _Parts(ids, before, conversation)

    @staticmethod
    def _truncate(p: _Parts, cut: int) -> tuple[list[int], int | None]:
        """``p``'s tokens less ``cut`` (see the module's docstring), and its ``before`` count after."""
        if cut == 0:
            return p.ids, p.before
        if p.conversation is not None and p.before is not None and cut > p.conversation:
            conv, before = p.conversation, p.before  # the whole conversation goes, then the response's start
            return p.ids[conv:before] + p.ids[min(before + cut - conv, len(p.ids) - 1) :], before - conv
        return p.ids[cut:], (p.before - cut) if p.before is not None and p.before > cut else None

    def _accepts_two_user_turns(self) -> bool:
        try:
            self.chat([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
        except Exception:  # Jinja's raise_exception: roles must alternate
            return False
        return True
