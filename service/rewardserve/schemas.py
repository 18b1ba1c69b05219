"""Wire models: every request and response body of the HTTP API, in one place."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, FiniteFloat, StringConstraints

from .prompt_formats import check_format_name


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(_Wire):
    role: str = Field(description="e.g. 'system', 'user', 'assistant'")
    content: str


Prompt = Annotated[str | list[Message], Field(description="a string, or a chat as a list of role/content messages")]
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
PromptFormat = Annotated[str, StringConstraints(max_length=1024), AfterValidator(check_format_name), Field(
    description="how string prompts are read: 'auto' (detect a chat template), 'plain', a family (chatml, llama3, "
                "llama2, gemma, phi3, zephyr) or 'tokenizer:<path or hub id>'; default: the service's prompt_format")]


class ScoreItem(_Wire):
    prompt: Prompt
    response: str
    id: str | None = Field(None, max_length=1024, description="echoed back in the result")
    reference: dict[ModelName, FiniteFloat] | None = Field(
        None, description="per-model reference reward r_ref(x); overrides stored references"
    )


class AggregateSpec(_Wire):
    method: Literal["lsc_sum", "raw_sum", "min"] = "lsc_sum"
    weights: dict[ModelName, FiniteFloat] | None = Field(None, description="per-model weights (default 1)")


class ScoreRequest(_Wire):
    items: list[ScoreItem] = Field(min_length=1)
    models: list[ModelName] | None = Field(None, min_length=1, description="default: every configured model")
    aggregate: AggregateSpec | None = None
    prompt_format: PromptFormat | None = None


class ScoreResult(BaseModel):
    id: str | None
    raw: dict[str, float]
    reference: dict[str, float]
    transformed: dict[str, float]
    aggregate: float
    p_all_good: float | None = Field(None, description="exp(Σ u_m); present for unit-weight lsc_sum over LSC models")
    truncated: dict[str, bool]
    warnings: list[str] | None = None


class ModelRevision(BaseModel):
    revision: str


class Usage(BaseModel):
    items: int
    tokens: int


class ScoreResponse(BaseModel):
    results: list[ScoreResult]
    aggregate_method: str
    models: dict[str, ModelRevision]
    usage: Usage


class ReferenceEntry(_Wire):
    prompt: Prompt
    value: FiniteFloat | None = Field(None, description="the reference reward; or give 'samples'")
    samples: list[str] | None = Field(
        None, min_length=1, description="base-policy responses; the service scores them and stores their quantile"
    )
    n_samples: int | None = Field(None, ge=1, description="with 'value': how many samples it was computed from")


class DefaultReference(_Wire):
    value: FiniteFloat
    n_samples: int | None = Field(None, ge=1)


class ReferencesUpload(_Wire):
    model: ModelName
    entries: list[ReferenceEntry] = Field(default_factory=list)
    default: DefaultReference | None = Field(
        None, description="the model's stored default reference, used for prompts with no reference of their own"
    )
    quantile: float | None = Field(None, ge=0.0, le=1.0, description="quantile of sample rewards (default 0.85)")
    policy: str | None = Field(None, max_length=1024, description="id of the policy that made the samples")


class ReferencesLookup(_Wire):
    model: ModelName
    prompt_fingerprints: list[Annotated[str, StringConstraints(min_length=64, max_length=64)]] = Field(min_length=1)


class ReferencesStored(BaseModel):
    model: str
    stored: int
    fingerprints: list[str]
    values: list[float]


class StoredReference(BaseModel):
    model: str
    prompt_fingerprint: str
    value: float
    revision: str | None
    quantile: float | None
    n_samples: int | None
    policy: str | None
    updated_at: float


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class OpenRLHFRequest(BaseModel):
    """OpenRLHF's remote reward-model request: ``query`` = prompt + response as one string."""

    model_config = ConfigDict(extra="ignore")  # OpenRLHF may send more fields; they are not used
    query: list[str] = Field(min_length=1)
    prompts: list[str] = Field(min_length=1)
    labels: list[str | float | int | bool | None] | None = Field(None, description="accepted and not used")
