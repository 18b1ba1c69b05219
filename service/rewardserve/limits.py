"""Limits checked on a request's structure (the route and the off-loop body reader share them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .config import LimitsConfig
from .errors import TooManyMessages


def check_messages(where: str, elements: Sequence[Any], limits: LimitsConfig) -> None:
    """``TooManyMessages`` if an element's ``prompt`` (a parsed JSON object's, or a validated model's)
    is a chat of more than ``limits.max_messages_per_prompt`` messages, or the elements' chats hold
    more than ``limits.max_messages_per_request`` together. What these bound is the cost of a body:
    validating a chat message costs more than a character of text, and each is a few Python objects
    (every full pass of the garbage collector walks them all, holding the GIL)."""
    per_prompt, total = limits.max_messages_per_prompt, 0
    for i, el in enumerate(elements):
        prompt = el.get("prompt") if isinstance(el, dict) else getattr(el, "prompt", None)
        if isinstance(prompt, list):
            if len(prompt) > per_prompt:
                raise TooManyMessages(
                    f"{where}[{i}].prompt has {len(prompt)} messages; the limit (max_messages_per_prompt) is "
                    f"{per_prompt}"
                )
            total += len(prompt)
    if total > limits.max_messages_per_request:
        raise TooManyMessages(
            f"{where} hold {total} chat messages; the limit (max_messages_per_request) is "
            f"{limits.max_messages_per_request}"
        )
