"""A ``kind: judge`` backbone's configuration: the turn template and its checks, the yes/no
spellings, the models (questions) and the backbone (backends/judge.py serves it; free of torch here)."""

from __future__ import annotations

import string
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .backbone import BatchingConfig, ModelConfig
from .base import check_device

# -- kind: judge (backends/judge.py serves it; its config lives here, free of torch) ----------------

# the question first: it joins the prefix a GRPO group shares, so each response adds only its own tokens
DEFAULT_TEMPLATE = "{question} Answer Yes or No.\n\nReply:\n{response}"
DEFAULT_YES_TOKENS = ("Yes", " Yes", "yes", " yes")
DEFAULT_NO_TOKENS = ("No", " No", "no", " no")
TEMPLATE_FIELDS = frozenset({"response", "question", "conversation"})


def template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def check_template(template: str) -> str:
    """A judge turn template: a ``str.format`` string whose fields are only ``{response}``,
    ``{question}`` and optionally ``{conversation}`` (no attributes, indices, conversions or format
    specs; ``{{`` and ``}}`` for literal braces), with both ``{response}`` and ``{question}``."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"template is not a valid format string: {e}") from None
    used = set()
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS or spec or conversion:
            raise ValueError(
                f"template field {{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
                f" is not allowed: use only {{response}}, {{question}} and {{conversation}}"
            )
        used.add(name)
    missing = {"response", "question"} - used
    if missing:
        raise ValueError(f"template needs {', '.join('{' + m + '}' for m in sorted(missing))}")
    return template


class JudgeModelConfig(ModelConfig):
    """One judge model: a yes/no question put to the backbone's LM (plus the reference settings every
    model has: ``transform``, ``default_reference``, ``missing_reference``)."""

    question: str = Field(
        min_length=1, description="the yes/no question, e.g. 'Is the reply polite?'; raw = log P(Yes) − log P(No)"
    )
    template: str | None = Field(
        None,
        description="content of the judge's user turn: a format string with {response} and {question} (and "
        "optionally {conversation}: the conversation as plain text there instead of as turns); default: "
        + repr(DEFAULT_TEMPLATE),
    )
    yes_tokens: list[str] = Field(
        list(DEFAULT_YES_TOKENS),
        min_length=1,
        description="spellings of Yes; those that are one token of the tokenizer are summed (at least one must be)",
    )
    no_tokens: list[str] = Field(
        list(DEFAULT_NO_TOKENS),
        min_length=1,
        description="spellings of No; those that are one token of the tokenizer are summed (at least one must be)",
    )

    _template = field_validator("template")(lambda v: v if v is None else check_template(v))

    @model_validator(mode="after")
    def _judge_only(self) -> JudgeModelConfig:
        if self.head is not None or not self.length_correction:
            raise ValueError("judge models take no 'head' or 'length_correction' (encoder_head only)")
        if set(self.yes_tokens) & set(self.no_tokens):
            raise ValueError(f"yes_tokens and no_tokens overlap: {sorted(set(self.yes_tokens) & set(self.no_tokens))}")
        return self

    @property
    def turn_template(self) -> str:
        return self.template or DEFAULT_TEMPLATE


class JudgeBackboneConfig(BaseModel):
    """A ``kind: judge`` backbone: one causal LM, one batcher, one or more questions (models)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["judge"] = "judge"
    path: str = Field(description="local folder or hub id of a causal LM with a chat template")
    revision: str | None = Field(None, description="hub revision (git ref) when path is a hub id")
    device: str = Field("cpu", description="cpu, cuda, cuda:N or mps")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights and activations")
    max_length: int = Field(
        1024, gt=8, description="tokens per (conversation, response, question); longer items lose their oldest tokens"
    )
    trust_remote_code: bool = Field(False, description="run model code shipped with a hub checkpoint")
    pad_to_multiple_of: int = Field(8, gt=0, description="batches are padded to a multiple of this many tokens")
    share_prompt_prefix: bool | None = Field(
        None,
        description="items with the same conversation (a GRPO group), or an item's several questions, run "
        "their common tokens once (exact); None: on where the model supports it (full attention)",
    )
    batching: BatchingConfig | None = Field(None, description="overrides the top-level batching section")
    models: dict[str, JudgeModelConfig] = Field(min_length=1)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)
