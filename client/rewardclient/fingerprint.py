"""The prompt fingerprint: the key of per-prompt reference rewards, identical in server and SDK.

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
from typing import Any


def canonical_prompt(prompt: str | Sequence[Mapping[str, Any]] | Sequence[Any]) -> str:
    if isinstance(prompt, str):
        obj: Any = prompt
    else:
        obj = []
        for m in prompt:
            role, content = (m["role"], m["content"]) if isinstance(m, Mapping) else (m.role, m.content)
            obj.append({"content": content, "role": role})
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def prompt_fingerprint(prompt: str | Sequence[Mapping[str, Any]] | Sequence[Any]) -> str:
    """sha256 hex digest of the canonical JSON encoding of ``prompt`` (see module docstring)."""
    return hashlib.sha256(canonical_prompt(prompt).encode("utf-8")).hexdigest()
