"""JSON parsed in pieces (api/json_pieces.py) is ``json.loads``: the same values and the same errors
(message and position) for any text, while no single call into the C parser takes a long piece."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewardserve.api import json_pieces

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=6) | st.dictionaries(st.text(max_size=8), kids, max_size=6),
    max_leaves=60,
)


def _same(text: str | bytes) -> None:
    try:
        want: Any = json.loads(text)
    except ValueError as e:
        with pytest.raises(type(e)) as got:
            json_pieces.loads(text)
        assert str(got.value) == str(e)
        return
    assert json.dumps(json_pieces.loads(text)) == json.dumps(want)  # NaN == NaN, as text


@pytest.fixture
def tiny_pieces(monkeypatch):
    """Pieces of 8 characters (first tries of 2): the generated texts' containers are read in pieces,
    in batches and element by element (the same for every generated input: shared safely)."""
    monkeypatch.setattr(json_pieces, "PIECE_CHARS", 8)
    monkeypatch.setattr(json_pieces, "_FIRST_TRY", 2)


@given(value=JSON, indent=st.sampled_from([None, 0, 2]))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_valid_json_parses_as_json_loads_does(tiny_pieces, value, indent):
    _same(json.dumps(value, indent=indent))
    _same(json.dumps(value, indent=indent).encode())


@given(value=JSON, cut=st.integers(0, 200), junk=st.sampled_from(["", ",", "]", "}", ":", '"', "x", " ,]", ",}", "\\"]))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_broken_json_fails_as_json_loads_does(tiny_pieces, value, cut, junk):
    text = json.dumps(value)
    cut = min(cut, len(text))
    _same(text[:cut] + junk + text[cut:])
    _same(text[:cut])


@pytest.mark.parametrize(
    "text",
    [
        '{"a": [1, 2,]}',
        '{"a": 1,}',
        "[1 2]",
        '{"a" 1}',
        "{1: 2}",
        "[1]x",
        "\ufeff[1]",
        '"\\ud800"',
        "[NaN, -Infinity]",
        "",
    ],
)
def test_edge_cases(tiny_pieces, text):
    _same(text)


def test_deep_nesting_fails_as_json_loads_does(tiny_pieces):
    with pytest.raises(RecursionError):
        json.loads("[" * 100_000)
    with pytest.raises(RecursionError):
        json_pieces.loads("[" * 100_000)


def test_no_call_into_the_c_parser_takes_more_than_a_piece(monkeypatch):
    """A 16 MiB body of 600k small chat messages (``json.loads`` parses it in one call that holds the
    GIL throughout) is parsed in calls of at most ``PIECE_CHARS`` characters each; only a single
    string is ever longer (it is one value). A call that fails parses no more than its piece either."""
    msg = {"role": "", "content": ""}
    big = "x" * (3 * json_pieces.PIECE_CHARS)
    raw = json.dumps({"items": [{"prompt": [msg] * 600_000, "response": big}], "label": [[0] * 100_000]}).encode()
    calls: list[tuple[int, Any]] = []
    scan = json_pieces._SCAN

    def counted(s: str, idx: int) -> tuple[Any, int]:
        value, end = scan(s, idx)
        calls.append((end - idx, value))
        return value, end

    monkeypatch.setattr(json_pieces, "_SCAN", counted)
    assert json_pieces.loads(raw) == json.loads(raw)
    assert len(calls) > 16 * 2**20 // json_pieces.PIECE_CHARS  # many pieces (batches of messages, mostly)
    assert max(n for n, v in calls if v != big) <= json_pieces.PIECE_CHARS + 2  # a batch adds its brackets
