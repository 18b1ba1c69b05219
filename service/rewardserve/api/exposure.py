"""What answers may show of the machine: model descriptions without filesystem paths.

``GET /v1/models`` is open to every key (scope ``score``); where a model was loaded from is the
operator's business. A local path shows as its last component (``/srv/models/helpful.safetensors``
→ ``helpful.safetensors``); hub ids (``org/name``), revisions and every other value stay as they are.
"""

from __future__ import annotations

import os
from pathlib import PurePath
from typing import Any


def looks_like_path(value: str) -> bool:
    """An absolute, home-relative or dot-relative path, or a name that exists on this machine."""
    if value.startswith(("/", "~", "./", "../", "\\")) or (len(value) > 2 and value[1:3] in (":\\", ":/")):
        return True
    return ("/" in value or os.sep in value) and os.path.exists(value)


def without_paths(value: Any) -> Any:
    """``value`` (nested dicts and lists of strings, numbers, …) with every local path cut to its name."""
    if isinstance(value, str):
        return PurePath(value).name if looks_like_path(value) else value
    if isinstance(value, dict):
        return {k: without_paths(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_paths(v) for v in value]
    return value
