"""The wire vocabulary that the SDK and the server share, defined once (the server imports it).

- ``Prompt``: a string, or a chat as a list of ``{"role", "content"}`` messages (``Message``);
  ``plain_prompt`` turns any prompt-like value (mappings, or objects with ``.role`` and
  ``.content`` such as the server's pydantic messages) into that plain form.
- ``AggregateMethod``: how per-model rewards are combined (``lsc_sum`` | ``raw_sum`` | ``min``).
- ``ReferenceSource``: where a result's reference came from.
- ``DEFAULT_QUANTILE``: the quantile of base-policy sample rewards that a reference is.
- ``ERROR_TYPES``: every error ``type`` the service answers with (``{"error": {"type", "message"}}``),
  its HTTP status and whether trying again may succeed; the server's error table and the SDK's
  exceptions and retries both read it.
- The prompt fingerprint, the key of per-prompt reference rewards::

    fingerprint(prompt) = sha256(canonical_json(prompt)).hexdigest()

  ``canonical_json``: a string prompt is encoded as the JSON string itself; a chat prompt as the list
  of its messages, each exactly ``{"content": ..., "role": ...}`` (keys sorted, other keys dropped);
  UTF-8, no ASCII escaping, separators ``","`` and ``":"``, no whitespace. So ``"Hi"`` hashes
  ``"Hi"`` (with the quotes) and ``[{"role": "user", "content": "Hi"}]`` hashes
  ``[{"content":"Hi","role":"user"}]``. A string prompt and a one-message chat are different prompts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple, TypedDict, get_args


class Message(TypedDict):
    role: str
    content: str


Messages = list[Message]
Prompt = str | Messages
# what the SDK and the server accept where a prompt goes: a string, or messages as mappings or as
# objects with .role and .content
PromptLike = str | Sequence[Mapping[str, Any]] | Sequence[Any]

AggregateMethod = Literal["lsc_sum", "raw_sum", "min"]
AGGREGATE_METHODS: tuple[AggregateMethod, ...] = get_args(AggregateMethod)
DEFAULT_AGGREGATE: AggregateMethod = "lsc_sum"

# inline (the item), stored (the set's entry for the prompt), set_default (the set's calibrated
# default), config_default (the model's default_reference), not_applicable (a reference-free
# transform, e.g. a check's score)
ReferenceSource = Literal["inline", "stored", "set_default", "config_default", "not_applicable"]
REFERENCE_SOURCES: tuple[ReferenceSource, ...] = get_args(ReferenceSource)

DEFAULT_QUANTILE = 0.85  # a reference is this quantile of the base policy's sample rewards
MAX_ABS_VALUE = 1e6  # the bound on references, weights and set defaults the server accepts (|x| ≤ 1e6)


class ErrorType(NamedTuple):
    """One error ``type`` on the wire: its HTTP status, and whether the same request may succeed
    when tried again (later, or on another replica)."""

    name: str
    status: int
    retryable: bool


INVALID_REQUEST = ErrorType("invalid_request", 422, False)
INVALID_PROMPT_FORMAT = ErrorType("invalid_prompt_format", 422, False)
MISSING_REFERENCE = ErrorType("missing_reference", 422, False)
STALE_REFERENCE = ErrorType("stale_reference", 422, False)
MISSING_LABEL = ErrorType("missing_label", 422, False)  # an item lacks the label a check needs
UNAUTHORIZED = ErrorType("unauthorized", 401, False)
FORBIDDEN = ErrorType("forbidden", 403, False)
MODEL_NOT_FOUND = ErrorType("model_not_found", 404, False)
REFERENCE_NOT_FOUND = ErrorType("reference_not_found", 404, False)
REFERENCE_SET_NOT_FOUND = ErrorType("reference_set_not_found", 404, False)
NOT_FOUND = ErrorType("not_found", 404, False)
METHOD_NOT_ALLOWED = ErrorType("method_not_allowed", 405, False)
TOO_MANY_ITEMS = ErrorType("too_many_items", 413, False)
TEXT_TOO_LONG = ErrorType("text_too_long", 413, False)
TOO_MANY_MODELS = ErrorType("too_many_models", 413, False)
TOO_MANY_REFERENCES = ErrorType("too_many_references", 413, False)
TOO_MANY_SAMPLES = ErrorType("too_many_samples", 413, False)
PAYLOAD_TOO_LARGE = ErrorType("payload_too_large", 413, False)
UNSUPPORTED_MEDIA_TYPE = ErrorType("unsupported_media_type", 415, False)
CLIENT_CLOSED_REQUEST = ErrorType("client_closed_request", 499, False)
MODEL_ERROR = ErrorType("model_error", 500, False)
INTERNAL_ERROR = ErrorType("internal_error", 500, False)
NOT_READY = ErrorType("not_ready", 503, True)  # loading, draining, or forwards failing: later, or another replica
LOAD_FAILED = ErrorType("load_failed", 503, False)  # a model failed to load: only an operator helps
NOT_LIVE = ErrorType("not_live", 503, False)  # /healthz: restart the process
OVERLOADED = ErrorType("overloaded", 503, True)
REFERENCE_STORE_UNAVAILABLE = ErrorType("reference_store_unavailable", 503, True)
REFERENCE_STORE_FULL = ErrorType("reference_store_full", 503, True)  # until memory is freed or raised

ERROR_TYPES: dict[str, ErrorType] = {
    t.name: t
    for t in (
        INVALID_REQUEST,
        INVALID_PROMPT_FORMAT,
        MISSING_REFERENCE,
        STALE_REFERENCE,
        MISSING_LABEL,
        UNAUTHORIZED,
        FORBIDDEN,
        MODEL_NOT_FOUND,
        REFERENCE_NOT_FOUND,
        REFERENCE_SET_NOT_FOUND,
        NOT_FOUND,
        METHOD_NOT_ALLOWED,
        TOO_MANY_ITEMS,
        TEXT_TOO_LONG,
        TOO_MANY_MODELS,
        TOO_MANY_REFERENCES,
        TOO_MANY_SAMPLES,
        PAYLOAD_TOO_LARGE,
        UNSUPPORTED_MEDIA_TYPE,
        CLIENT_CLOSED_REQUEST,
        MODEL_ERROR,
        INTERNAL_ERROR,
        NOT_READY,
        LOAD_FAILED,
        NOT_LIVE,
        OVERLOADED,
        REFERENCE_STORE_UNAVAILABLE,
        REFERENCE_STORE_FULL,
    )
}


def plain_prompt(prompt: PromptLike) -> Prompt:
    """``prompt`` as plain data: the string itself, or a list of exactly ``{"role", "content"}`` dicts
    (other keys dropped)."""
    if isinstance(prompt, str):
        return prompt
    out: Messages = []
    messages: Sequence[Any] = prompt  # mappings, or objects with .role and .content
    for m in messages:
        role, content = (m["role"], m["content"]) if isinstance(m, Mapping) else (m.role, m.content)
        out.append({"role": role, "content": content})
    return out


def canonical_prompt(prompt: PromptLike) -> str:
    """The canonical JSON encoding of ``prompt`` (see the module docstring)."""
    return json.dumps(plain_prompt(prompt), ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def prompt_fingerprint(prompt: PromptLike) -> str:
    """sha256 hex digest of the canonical JSON encoding of ``prompt`` (see the module docstring)."""
    return hashlib.sha256(canonical_prompt(prompt).encode("utf-8")).hexdigest()


def plain_label(label: Any) -> Any:
    """``label`` (an item's ground truth: any JSON value) as plain JSON data: numpy arrays and scalars
    (``.tolist()``, as a trainer's parquet columns hold them) become lists and numbers, tuples lists,
    mapping keys strings. A value JSON cannot hold raises ``TypeError`` naming its type."""
    if label is None or isinstance(label, (str, bool, int, float)):
        return label
    if hasattr(label, "tolist") and callable(label.tolist):  # numpy arrays and scalars, torch tensors
        return plain_label(label.tolist())
    if isinstance(label, Mapping):
        return {str(k): plain_label(v) for k, v in label.items()}
    if isinstance(label, (list, tuple)):
        return [plain_label(v) for v in label]
    raise TypeError(f"a label must be JSON data (str, number, bool, None, list, dict); got {type(label).__name__}")
