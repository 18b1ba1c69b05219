"""The built-in checks: pure functions ``(response, label, **options) -> float in [0, 1]``.

Each one answers "is this response good on this property?" with 1.0 (yes) or 0.0 (no); none does
I/O or keeps state, so the same call gives the same score anywhere. They run inside the worker
processes of ``VerifierEngine`` (never in the server's own process): ``math`` uses ``signal.alarm``
inside math-verify and may meet answers that take forever to evaluate.

- ``math``: the response's final answer (the ``\\boxed{}`` answer, else the last LaTeX or plain
  expression; several boxed answers are read as one set) equals the reference by math-verify:
  ``\\frac{1}{2}`` = ``0.5`` = ``1/2``, ``{1,2}`` = ``{2,1}``, ``(0, 1]`` as an interval, ``x = 3`` = ``3``.
  Label: the reference answer (a string or a number) or a list of accepted answers (any match scores 1).
  An answer whose exact value would have more than ``max_digits`` digits (``\\boxed{9^{9^{9^{9}}}}``)
  is sized on its parsed tree and never evaluated: 1 if it is the reference as written, else 0 with
  the reason (``CheckRefused``). Exact rationals of more than 15 digits are compared exactly.
- ``exact_match``: the normalised response equals a normalised label (or any of a list). Normalising:
  Unicode NFKC, case folded, whitespace runs collapsed to one space, and punctuation and quotes
  around the text stripped (``" Paris. "`` = ``paris``); punctuation inside is kept (``3.14`` ≠ ``314``).
- ``regex``: the response matches ``pattern`` (from the config): ``mode: search`` (default, anywhere)
  or ``mode: full`` (the whole response). No label.
- ``json``: the response parses as JSON (a single ```json fenced block is unwrapped first); when the
  label is a JSON Schema (an object), the parsed value must also validate against it.
- ``choice``: the letter the response chooses equals the label (``"B"``, or a list of letters). The
  chosen letter is read as the last explicit statement ("answer is (B)", "Answer: B", ``\\boxed{B}``),
  else a response that is just a letter ("B", "(B)", "**B**", "B. Paris"), else the last letter standing
  alone as ``(B)`` or ``**B**``. ``letters`` (option, default ``ABCDEFGHIJ``) is the allowed set.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable
from typing import Any

from .math_size import TooLarge, compare_exactly, count_digits, same_tree, too_large

CheckFunction = Callable[..., float]


def _answers(label: Any) -> list[Any]:
    """A label as a list of accepted answers (a list label is already one)."""
    return list(label) if isinstance(label, list | tuple) else [label]


# --- math ---------------------------------------------------------------------------------------

DEFAULT_MAX_DIGITS = 100_000
"""``math``'s default ``max_digits``: an answer (or reference) that sympy would evaluate to an exact
number of more decimal digits is not evaluated (see ``exact_size``)."""


class CheckRefused(Exception):
    """A check refuses an input it will not evaluate (``math``: an answer too large to evaluate).
    The item scores 0 and the message, which must not quote the label, is its warning."""


def math_check(response: str, label: Any, **options: Any) -> float:
    """1.0 when the response's final answer is mathematically equal to the reference (or any of a
    list). Options: ``float_rounding`` (decimal places compared, default 6); ``max_digits`` (default
    ``DEFAULT_MAX_DIGITS``; None: no limit): an answer whose exact value would have more digits
    (``\\boxed{9^{9^{9^{9}}}}``, ``(10^{10})!``) is not evaluated: it scores 1 only when it is the
    reference as written, else 0, and the check raises ``CheckRefused`` saying why (the worker makes
    that the item's warning); a reference that large likewise (its warning does not quote it).
    math-verify's own timeouts are off (the engine times the whole check); what it cannot parse or
    compare is a wrong answer (0), as in math-verify, not an error."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    rounding = int(options.get("float_rounding", 6))
    max_digits = options.get("max_digits", DEFAULT_MAX_DIGITS)
    limit = math.inf if max_digits is None else float(max_digits)
    extraction = [LatexExtractionConfig(), ExprExtractionConfig()]
    predicted = parse(response, extraction_config=extraction, parsing_timeout=None)
    if not predicted:
        return 0.0
    big_answer = too_large(predicted, limit)
    big_reference: TooLarge | None = None
    for answer in _answers(label):
        text = str(answer)
        # a bare reference ("1/2", "\frac{1}{2}", "{1,2}") reads best as LaTeX in math mode
        gold = parse(f"${text}$", extraction_config=extraction, parsing_timeout=None)
        if not gold:
            gold = parse(text, extraction_config=extraction, parsing_timeout=None)
        if not gold:
            continue
        if same_tree(gold, predicted):  # math-verify's first comparison too; evaluates nothing
            return 1.0
        big = too_large(gold, limit)
        if big_answer is not None or big is not None:
            big_reference = big_reference or big
            continue
        exact = compare_exactly(gold, predicted)
        if exact is not None:
            if exact:
                return 1.0
            continue
        if verify(gold, predicted, float_rounding=rounding, timeout_seconds=None):
            return 1.0
    if big_answer is not None:
        raise CheckRefused(f"answer too large to evaluate: {big_answer} (max_digits {count_digits(limit)})")
    if big_reference is not None:
        raise CheckRefused(
            f"reference too large to evaluate: it would have about {count_digits(big_reference.size + 1)} digits "
            f"(max_digits {count_digits(limit)})"
        )
    return 0.0


_WARM = False


def warm_math() -> None:
    """Run a few math checks once per process: math-verify and sympy load lazily, and a first check
    of each shape takes up to a second (it must not count against an item's timeout). Quiets
    math-verify's warning that its own timeouts are off (the engine times each check)."""
    global _WARM
    if _WARM:
        return
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    for response, label in [
        ("\\boxed{1}", "1"),
        ("$\\frac{1}{2}$", "0.5"),
        ("\\boxed{(0, 1]}", "(0,1]"),
        ("\\boxed{\\{1, 2\\}}", "\\{2, 1\\}"),
        ("x = 2\\sqrt{2}", "\\sqrt{8}"),
    ]:
        math_check(response, label)
    _WARM = True


# --- exact match --------------------------------------------------------------------------------

_EDGE = "\"'`“”‘’«».,;:!?()[]{}<>*_ \t\r\n"


def normalize_text(text: str) -> str:
    """NFKC, case folded, whitespace collapsed, punctuation and quotes around the text stripped."""
    t = unicodedata.normalize("NFKC", text).casefold()
    t = " ".join(t.split())
    return t.strip(_EDGE)


def exact_match(response: str, label: Any, **options: Any) -> float:
    """1.0 when the normalised response equals the normalised label or one of a list of labels."""
    got = normalize_text(response)
    return 1.0 if any(got == normalize_text(str(a)) for a in _answers(label)) else 0.0


# --- regex --------------------------------------------------------------------------------------


def regex_check(response: str, label: Any = None, *, pattern: str, mode: str = "search", **options: Any) -> float:
    """1.0 when ``pattern`` matches the response: anywhere (``mode: search``) or as a whole
    (``mode: full``). The label is ignored."""
    compiled = re.compile(pattern)
    found = compiled.fullmatch(response) if mode == "full" else compiled.search(response)
    return 1.0 if found else 0.0


# --- json ---------------------------------------------------------------------------------------

_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n?```\s*$", re.DOTALL | re.IGNORECASE)


def json_check(response: str, label: Any = None, **options: Any) -> float:
    """1.0 when the response parses as JSON and, if the label is a JSON Schema (an object), the
    value validates against it."""
    fenced = _FENCE.match(response)
    try:
        value = json.loads(fenced.group(1) if fenced else response)
    except ValueError:
        return 0.0
    if isinstance(label, dict):
        import jsonschema

        validator_cls = jsonschema.validators.validator_for(label)
        return 1.0 if validator_cls(label).is_valid(value) else 0.0
    return 1.0


# --- multiple choice ----------------------------------------------------------------------------


def _choice_patterns(letters: str) -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    L = f"[{re.escape(letters)}]"
    stated = re.compile(
        rf"(?i:answer|choice|option)\s*(?i:is|:)?\s*[:\-]?\s*(?:\*\*|__)?\s*[\(\[]?\s*({L})\s*[\)\]]?(?![A-Za-z0-9])"
        rf"|\\boxed\{{\s*(?:\\text\{{)?\s*\(?({L})\)?\s*\}}?\s*\}}"
    )
    alone = re.compile(rf"^\s*(?:\*\*|__)?\s*[\(\[]?({L})[\)\]]?\s*(?:\*\*|__)?\s*(?:[.:)\-]|$)")
    marked = re.compile(rf"(?:\(({L})\)|\*\*({L})\*\*)")
    return stated, alone, marked


def extract_choice(response: str, letters: str = "ABCDEFGHIJ") -> str | None:
    """The letter a response chooses, or None (see the module docstring for the rules)."""
    letters = letters.upper()
    stated, alone, marked = _choice_patterns(letters)
    hits = list(stated.finditer(response))
    if hits:
        last = hits[-1]
        return (last.group(1) or last.group(2)).upper()
    m = alone.match(response)
    if m:
        return m.group(1).upper()
    hits = list(marked.finditer(response))
    if hits:
        last = hits[-1]
        return (last.group(1) or last.group(2)).upper()
    return None


def choice_check(response: str, label: Any, *, letters: str = "ABCDEFGHIJ", **options: Any) -> float:
    """1.0 when the chosen letter equals the label (case-insensitive) or one of a list."""
    chosen = extract_choice(response, letters)
    if chosen is None:
        return 0.0
    return 1.0 if any(chosen == str(a).strip().strip("().").upper() for a in _answers(label)) else 0.0


BUILTIN_CHECKS: dict[str, CheckFunction] = {
    "math": math_check,
    "exact_match": exact_match,
    "regex": regex_check,
    "json": json_check,
    "choice": choice_check,
}
"""Built-in verifier name → check function."""

NEEDS_LABEL: dict[str, bool] = {"math": True, "exact_match": True, "regex": False, "json": False, "choice": True}
"""Whether a built-in check needs a label on every item (``json``: the schema is optional)."""
