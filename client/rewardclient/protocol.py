"""The wire vocabulary that the SDK and the server share, defined once (the server imports it).

- ``Prompt``: a string, or a chat as a list of ``{"role", "content"}`` messages (``Message``);
  ``plain_prompt`` turns any prompt-like value (mappings, or objects with ``.role`` and
  ``.content`` such as the server's pydantic messages) into that plain form.
- ``AggregateMethod``: how per-model rewards are combined (``lsc_sum`` | ``raw_sum`` | ``min``).
- ``ReferenceSource``: where a result's reference came from.
- ``DEFAULT_QUANTILE``: the quantile of base-policy sample rewards that a reference is.
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
from typing import Any, Literal, TypedDict, get_args


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
# default), config_default (the model's default_reference)
ReferenceSource = Literal["inline", "stored", "set_default", "config_default"]
REFERENCE_SOURCES: tuple[ReferenceSource, ...] = get_args(ReferenceSource)

DEFAULT_QUANTILE = 0.85  # a reference is this quantile of the base policy's sample rewards


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
