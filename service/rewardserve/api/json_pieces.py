"""JSON parsed in pieces, so that no single C call holds the GIL for long.

``json.loads`` (and pydantic's JSON parser) turn a whole document into Python objects in one call
into C or Rust, which holds the GIL throughout: for a 16 MiB request body, 0.1-0.2 s in which no
other thread runs, the event loop's included (``/healthz`` waits). ``loads`` gives the same result
as ``json.loads`` — the same values, the same ``JSONDecodeError`` (message and position) for the same
mistake — but parses each container longer than ``PIECE_CHARS`` element by element from Python, and
only values shorter than that (and single strings or numbers) in one call of ``json``'s C scanner:
between two calls, the interpreter can hand the GIL to another thread.
"""

from __future__ import annotations

import json
import re
import sys
from json.decoder import scanstring  # type: ignore[attr-defined]  # the C string scanner json uses
from typing import Any

PIECE_CHARS = 64 * 1024  # the most characters one C call parses (but a single string or number)
_FIRST_TRY = 256  # a container is first tried whole on this many characters
_CUTS = 4  # a batch tries the last commas of its piece, up to this many
_BACKOFF = 16  # after a batch found no cut: elements read one by one before the next try (doubling)

_SCAN = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[attr-defined]  # (s, idx) -> (value, end)
_WS = re.compile(r"[ \t\n\r]*")


def loads(raw: bytes | str) -> Any:
    """``json.loads(raw)``, parsed in pieces. Raises ``ValueError`` (``json.JSONDecodeError`` for a
    syntax error, ``RecursionError`` for nesting deeper than Python's recursion limit) as it does."""
    if isinstance(raw, bytes):
        s = raw.decode(json.detect_encoding(raw), "surrogatepass")
    else:
        s = raw
    if s.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", s, 0)
    idx = _WS.match(s, 0).end()  # type: ignore[union-attr]  # matches the empty string
    value, end = _value(s, idx)
    end = _WS.match(s, end).end()  # type: ignore[union-attr]
    if end != len(s):
        raise json.JSONDecodeError("Extra data", s, end)
    return value


def _value(s: str, idx: int) -> tuple[Any, int]:
    if s[idx : idx + 1] in ("{", "[") and len(s) - idx > _FIRST_TRY:
        # most containers are short: try them whole on a slice that grows 16-fold, up to a piece
        # (what a failed try parsed is at most 1/15 of what the next one parses)
        n = _FIRST_TRY
        while True:
            try:
                value, end = _SCAN(s[idx : idx + n], 0)
                return value, idx + end
            except (json.JSONDecodeError, StopIteration):
                pass  # longer than the slice (or wrong: parsed again below, where errors get their position)
            if n >= PIECE_CHARS or idx + n >= len(s):
                break
            n = min(16 * n, PIECE_CHARS)
        return _object(s, idx + 1) if s[idx] == "{" else _array(s, idx + 1)
    try:
        value, end = _SCAN(s, idx)
    except StopIteration as e:
        raise json.JSONDecodeError("Expecting value", s, e.value) from None
    return value, end


def _trailing_comma(s: str, comma: int, idx: int, kind: str) -> None:
    """The error of a comma just before the closing bracket, in this Python's words."""
    if sys.version_info >= (3, 13):
        raise json.JSONDecodeError(f"Illegal trailing comma before end of {kind}", s, comma)
    if kind == "object":
        raise json.JSONDecodeError("Expecting property name enclosed in double quotes", s, idx)
    raise json.JSONDecodeError("Expecting value", s, idx)


def _batch(s: str, idx: int, open_: str, close: str) -> tuple[Any, int, bool] | None:
    """The next elements (members) of the array (object) being read at ``idx``, parsed in one C call
    of at most ``PIECE_CHARS`` characters: ``(values, end, closed)``, ``end`` past the closing bracket
    (``closed``) or at a comma; ``None`` when none of the last commas of the piece ends an element.

    ``open_ + s[idx:cut] + close`` parses, and exactly to its end, only when ``cut`` is a comma of
    this container's own level: a cut inside a string leaves that string unterminated, a cut inside
    a nested value leaves it (or this container) unclosed; so what parses is exactly the elements
    between ``idx`` and ``cut``."""
    piece = s[idx : idx + PIECE_CHARS]
    cut = len(piece)
    for _ in range(_CUTS):
        cut = piece.rfind(",", 0, cut)
        if cut <= 0:
            break
        text = open_ + piece[:cut] + close
        try:
            values, end = _SCAN(text, 0)
        except (json.JSONDecodeError, StopIteration):
            continue
        if end == len(text):
            return values, idx + cut, False
    try:  # the rest of the container fits in the piece
        values, end = _SCAN(open_ + piece, 0)
    except (json.JSONDecodeError, StopIteration):
        return None
    return values, idx + end - 1, True


def _object(s: str, idx: int) -> tuple[dict[str, Any], int]:
    """The object whose ``{`` is just before ``idx``; messages as ``json``'s own parser gives them."""
    obj: dict[str, Any] = {}
    idx = _WS.match(s, idx).end()  # type: ignore[union-attr]
    if s[idx : idx + 1] == "}":
        return obj, idx + 1
    skip, backoff = 0, _BACKOFF
    while True:
        batch = None
        if skip:
            skip -= 1
        else:
            batch = _batch(s, idx, "{", "}")
            skip, backoff = (0, _BACKOFF) if batch is not None else (backoff, 2 * backoff)
        if batch is not None:
            members, idx, closed = batch
            obj.update(members)  # as json.loads: a repeated key keeps its first place and its last value
            if closed:
                return obj, idx
        else:
            if s[idx : idx + 1] != '"':
                raise json.JSONDecodeError("Expecting property name enclosed in double quotes", s, idx)
            key, idx = scanstring(s, idx + 1)
            idx = _WS.match(s, idx).end()  # type: ignore[union-attr]
            if s[idx : idx + 1] != ":":
                raise json.JSONDecodeError("Expecting ':' delimiter", s, idx)
            idx = _WS.match(s, idx + 1).end()  # type: ignore[union-attr]
            obj[key], idx = _value(s, idx)
            idx = _WS.match(s, idx).end()  # type: ignore[union-attr]
        c = s[idx : idx + 1]
        if c == "}":
            return obj, idx + 1
        if c != ",":
            raise json.JSONDecodeError("Expecting ',' delimiter", s, idx)
        comma, idx = idx, _WS.match(s, idx + 1).end()  # type: ignore[union-attr]
        if s[idx : idx + 1] == "}":
            _trailing_comma(s, comma, idx, "object")


def _array(s: str, idx: int) -> tuple[list[Any], int]:
    """The array whose ``[`` is just before ``idx``."""
    out: list[Any] = []
    idx = _WS.match(s, idx).end()  # type: ignore[union-attr]
    if s[idx : idx + 1] == "]":
        return out, idx + 1
    skip, backoff = 0, _BACKOFF
    while True:
        batch = None
        if skip:
            skip -= 1
        else:
            batch = _batch(s, idx, "[", "]")
            skip, backoff = (0, _BACKOFF) if batch is not None else (backoff, 2 * backoff)
        if batch is not None:
            values, idx, closed = batch
            out += values
            if closed:
                return out, idx
        else:
            value, idx = _value(s, idx)
            out.append(value)
            idx = _WS.match(s, idx).end()  # type: ignore[union-attr]
        c = s[idx : idx + 1]
        if c == "]":
            return out, idx + 1
        if c != ",":
            raise json.JSONDecodeError("Expecting ',' delimiter", s, idx)
        comma, idx = idx, _WS.match(s, idx + 1).end()  # type: ignore[union-attr]
        if s[idx : idx + 1] == "]":
            _trailing_comma(s, comma, idx, "array")
