"""Wire models: every request and response body of the HTTP API, in one place."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, FiniteFloat, JsonValue, StringConstraints

from rewardclient.protocol import DEFAULT_AGGREGATE, DEFAULT_QUANTILE, MAX_ABS_VALUE, AggregateMethod, ReferenceSource

from .prompt_formats import check_format_name
from .references.base import DEFAULT_SET, SET_DEFAULT_FINGERPRINT, Reference, check_set_name


def check_encodable(text: str) -> str:
    """``text`` if it encodes as UTF-8: a lone surrogate (``"\\ud800"``, which JSON can carry) is
    refused here, with the item's location, instead of failing later in a tokenizer or a hash."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"text is not valid Unicode: a lone surrogate {text[e.start]!r} at character {e.start}"
        ) from None
    return text


# every string a request carries: any length (limits are checked by the route) but valid Unicode
Text = Annotated[str, AfterValidator(check_encodable)]
# every number a request gives the reward math: finite and |x| ≤ MAX_ABS_VALUE (rewardclient.protocol)
Bounded = Annotated[
    FiniteFloat,
    Field(ge=-MAX_ABS_VALUE, le=MAX_ABS_VALUE, description=f"finite, |x| ≤ {MAX_ABS_VALUE:g}"),
]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(_Wire):  # validates rewardclient.protocol.Message
    role: Text = Field(description="e.g. 'system', 'user', 'assistant'")
    content: Text


# the validated wire form of rewardclient.protocol.Prompt (plain_prompt turns it back into plain data)
Prompt = Annotated[Text | list[Message], Field(description="a string, or a chat as a list of role/content messages")]
ModelName = Annotated[Text, StringConstraints(min_length=1, max_length=256)]
PromptFormat = Annotated[
    str,
    StringConstraints(max_length=1024),
    AfterValidator(check_format_name),
    Field(
        description="how string prompts are read: 'auto' (detect a chat template), 'plain', a family (chatml, llama3, "
        "llama2, gemma, phi3, zephyr) or 'tokenizer:<path or hub id>'; default: the service's prompt_format"
    ),
]
ReferenceSetName = Annotated[
    str,
    AfterValidator(check_set_name),
    Field(
        description="a reference set (one base policy's calibration): 1-64 characters of A-Z a-z 0-9 . _ -, "
        "starting with a letter or digit",
        examples=[DEFAULT_SET],
    ),
]


class ScoreItem(_Wire):
    prompt: Prompt
    response: Text
    id: Text | None = Field(None, max_length=1024, description="echoed back in the result")
    reference: dict[ModelName, Bounded] | None = Field(
        None, description="per-model reference reward r_ref(x); overrides stored references"
    )
    label: JsonValue | None = Field(
        None, repr=False, description="ground truth (any JSON value) for checks; never echoed or logged"
    )


class AggregateSpec(_Wire):
    method: AggregateMethod = DEFAULT_AGGREGATE
    weights: dict[ModelName, Bounded] | None = Field(None, description="per-model weights (default 1)")


class ScoreRequest(_Wire):
    items: list[ScoreItem] = Field(min_length=1)
    models: list[ModelName] | None = Field(None, min_length=1, description="default: every configured model")
    aggregate: AggregateSpec | None = None
    prompt_format: PromptFormat | None = None
    reference_set: ReferenceSetName = Field(DEFAULT_SET, description="the reference set stored references come from")
    missing_reference: Literal["error"] | None = Field(
        None,
        description="'error': answer 422 missing_reference when an LSC model has no inline or stored reference "
        "for an item (no set or config default); default: each model's configured policy",
    )


class ScoreResult(BaseModel):
    id: str | None
    raw: dict[str, float | None] = Field(
        description="per model, its raw reward (a check: its score in [0, 1]); null when the model was left out "
        "of this item (a check with missing_label: skip and no label; a warning says so)"
    )
    reference: dict[str, float]
    reference_source: dict[str, ReferenceSource] = Field(
        description="per model, where its reference came from: inline (the item), stored (the set's entry for the "
        "prompt), set_default (the set's calibrated default), config_default (the model's default_reference)"
    )
    transformed: dict[str, float | None] = Field(description="per model, u = log P(good) (null where raw is null)")
    aggregate: float = Field(description="over the models not left out of this item")
    p_all_good: float | None = Field(
        None,
        description="exp(Σ u_m) for unit-weight lsc_sum when every model asked for has a real probability for "
        "this item (checks and judges; reward models with an inline or stored reference) and none was left "
        "out; null otherwise",
    )
    truncated: dict[str, bool]
    warnings: list[str] | None = Field(
        None, exclude_if=lambda v: v is None, description="present only when there is something to say"
    )


class ModelRevision(BaseModel):
    revision: str


class Usage(BaseModel):
    items: int
    tokens: int


class ScoreResponse(BaseModel):
    results: list[ScoreResult]
    aggregate_method: str
    reference_set: str
    models: dict[str, ModelRevision]
    usage: Usage


class ReferenceEntry(_Wire):
    prompt: Prompt
    value: Bounded | None = Field(None, description="the reference reward; or give 'samples'")
    samples: list[Text] | None = Field(
        None, min_length=1, description="base-policy responses; the service scores them and stores their quantile"
    )
    n_samples: int | None = Field(None, ge=1, description="with 'value': how many samples it was computed from")


class DefaultReference(_Wire):
    value: Bounded
    n_samples: int | None = Field(None, ge=1)


class ReferencesUpload(_Wire):
    model: ModelName
    entries: list[ReferenceEntry] = Field(default_factory=list)
    default: DefaultReference | None = Field(
        None, description="the model's stored default reference, used for prompts with no reference of their own"
    )
    quantile: float | None = Field(
        None, ge=0.0, le=1.0, description=f"quantile of sample rewards (default {DEFAULT_QUANTILE})"
    )
    policy: Text | None = Field(None, max_length=1024, description="id of the policy that made the samples")
    reference_set: ReferenceSetName = Field(DEFAULT_SET, description="the set to store into")


class ReferencesLookup(_Wire):
    model: ModelName
    prompt_fingerprints: list[Annotated[str, StringConstraints(min_length=64, max_length=64)]] = Field(min_length=1)
    reference_set: ReferenceSetName = DEFAULT_SET


class ReferencesStored(BaseModel):
    model: str
    reference_set: str
    stored: int
    fingerprints: list[str]
    values: list[float]


class ReferencesFound(BaseModel):
    model: str
    reference_set: str
    revision: str = Field(description="the served model's revision")
    references: dict[str, Reference | None] = Field(description="per fingerprint asked for: its entry or null")
    default: Reference | None = Field(description="the model's default reference in the set, or null")


class StoredReference(BaseModel):
    reference_set: str
    model: str
    prompt_fingerprint: str
    value: float
    revision: str | None
    quantile: float | None
    n_samples: int | None
    policy: str | None
    updated_at: float


class ReferenceRow(_Wire):
    """One stored entry of a set, as exported and imported (``prompt_fingerprint``
    ``SET_DEFAULT_FINGERPRINT``: the model's default reference in the set)."""

    model: ModelName
    prompt_fingerprint: Annotated[str, StringConstraints(pattern=rf"^([0-9a-f]{{64}}|{SET_DEFAULT_FINGERPRINT})$")]
    value: Bounded
    revision: Text | None = Field(None, max_length=1024)
    quantile: float | None = Field(None, ge=0.0, le=1.0)
    n_samples: int | None = Field(None, ge=0, le=2**62)
    policy: Text | None = Field(None, max_length=1024)
    updated_at: FiniteFloat = Field(0.0, ge=0.0, description="unix time; 0: the time of the import")


class ReferenceSetContents(_Wire):
    """A set's entries: the body of an export, and of an import (where the path names the target set)."""

    reference_set: ReferenceSetName | None = Field(None, description="the set the entries were exported from")
    references: list[ReferenceRow]


class ReferenceSetInfo(BaseModel):
    name: str
    models: dict[str, int] = Field(description="entries per model (the default reference counts as one)")
    references: int


class ReferenceSetList(BaseModel):
    reference_sets: list[ReferenceSetInfo]


class ReferenceSetImported(BaseModel):
    reference_set: str
    imported: int


class ReferenceSetDeleted(BaseModel):
    reference_set: str
    deleted: int


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class OpenRLHFRequest(BaseModel):
    """OpenRLHF's remote reward-model request: ``query`` = prompt + response as one string. Empty lists
    get empty lists back (OpenRLHF before 0.11.2 sends an empty shard to every URL but the first)."""

    model_config = ConfigDict(extra="ignore")  # OpenRLHF may send more fields; they are not used
    query: list[Text]
    prompts: list[Text]
    labels: list[JsonValue] | None = Field(
        None, description="ground truth, one per query: each item's label (read by checks, never echoed)"
    )


class OpenRLHFResponse(BaseModel):
    """OpenRLHF's remote reward-model answer: ``rewards`` (= ``scores``), one per query, and
    ``extra_logs``: the aggregate and, per model, the raw and transformed rewards (``<model>/raw``)."""

    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float | None]]


class SlimeRequest(BaseModel):
    """slime's remote reward-model request (``--rm-type remote_rm``): one sample."""

    model_config = ConfigDict(extra="ignore")  # slime may send more fields; they are not used
    prompt: Prompt
    response: Text
    label: JsonValue | None = Field(None, description="ground truth: the item's label (read by checks, never echoed)")
