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


class TooLarge(Exception):
    """``exact_size`` met a subexpression whose exact value would pass the limit."""

    def __init__(self, expr: Any, size: float) -> None:
        super().__init__(f"{_show(expr)} would have about {_count(size + 1)} digits")
        self.expr, self.size = expr, size


def _show(expr: Any, width: int = 60) -> str:
    try:
        text = str(expr)  # an unevaluated tree prints as written; a huge literal may refuse to
    except ValueError:
        return "a number"
    return text if len(text) <= width else text[: width - 1] + "…"


def _count(digits: float) -> str:
    if not math.isfinite(digits):
        return "more than 1e308"
    return f"{digits:,.0f}" if digits < 1e6 else f"{digits:.2g}"


def _log10(n: int) -> float:
    return math.log10(abs(n)) if n else 0.0


def _magnitude(expr: Any, size: float) -> float:
    """An upper bound of ``|expr|`` for an exact number of the given size: exact for a literal, at
    most 1 for a literal ``b^{-k}`` (``|b| ≥ 1``), else 10^size (a fraction's value is at most its
    numerator)."""
    if expr.is_Rational and size < 300:
        return abs(int(expr.p)) / int(expr.q)
    if expr.is_Pow and expr.base.is_Rational and abs(expr.base) >= 1 and expr.exp.is_Rational and expr.exp < 0:
        return 1.0
    return 10.0**size if size < 300 else math.inf


def exact_size(expr: Any, limit: float = math.inf) -> float | None:
    """An upper bound of log10 of the exact number sympy computes when it evaluates ``expr`` (for a
    fraction, of the larger of numerator and denominator: about its digits), or None when ``expr`` is
    not an exact number (a symbol, a float, π, a set, an equation …). Every subexpression is sized,
    exact or not, innermost first; the first whose bound passes ``limit`` raises ``TooLarge``.

    Sizes: an integer or fraction its own; ``a + b`` and ``a·b`` about the sum of theirs; ``b^e`` the
    base's times ``|e|`` (``|e|`` bounded by 10^size when ``e`` is itself an expression, so
    ``9^{9^{9^{9}}}`` is refused at ``9^{9^{9}}``, 3.7e8 digits, before anything is computed); ``n!``
    Stirling's bound; ``binom(n, k)`` ``n·log10 2``. A base of 0, ±1 or ±i has size 0 at any power. This
    reads the tree latex2sympy builds (unevaluated) and evaluates nothing."""
    import sympy  # type: ignore[import-untyped]  # no stubs; loaded in the workers only

    if isinstance(expr, sympy.Rational):  # integers included
        size = max(_log10(expr.p), _log10(expr.q))
    elif expr is sympy.S.ImaginaryUnit:
        return 0.0
    else:
        args = getattr(expr, "args", ())
        if not isinstance(args, tuple):
            return None
        sizes = [exact_size(a, limit) for a in args]
        exact = bool(sizes) and all(s is not None for s in sizes)
        known: list[float] = [s for s in sizes if s is not None]
        if not exact:
            return None
        if isinstance(expr, sympy.Pow):
            base, exp = known
            size = 0.0 if base == 0 else base * max(1.0, _magnitude(expr.exp, exp))
        elif isinstance(expr, sympy.Mul):
            size = sum(known)
        elif isinstance(expr, sympy.Add):
            size = sum(known) + _log10(len(known))
        elif isinstance(expr, sympy.factorial):
            n = _magnitude(expr.args[0], known[0])
            size = (n + 0.5) * math.log10(n) - (n - 1) * math.log10(math.e) if n > 1 else 0.0  # Stirling
        elif isinstance(expr, sympy.binomial):
            size = _magnitude(expr.args[0], known[0]) * math.log10(2)
        elif isinstance(expr, (sympy.UnevaluatedExpr, sympy.Abs, sympy.floor, sympy.ceiling, sympy.Max, sympy.Min)):
            size = max(known)
        else:
            return None
    if size > limit:
        raise TooLarge(expr, size)
    return size


def too_large(parsed: list[Any], limit: float) -> TooLarge | None:
    """The first expression of math-verify's parse result that is too large to evaluate, or None."""
    for expr in parsed:
        if not isinstance(expr, str):
            try:
                exact_size(expr, limit)
            except TooLarge as e:
                return e
    return None


def _same_tree(gold: list[Any], predicted: list[Any]) -> bool:
    """Whether a parsed reference and answer hold the same expression as written (sympy's structural
    equality, math-verify's first comparison; nothing is evaluated)."""
    return any(g == p for g in gold for p in predicted if not isinstance(g, str) and not isinstance(p, str))


EXACT_DIGITS = 15
"""Exact numbers with more digits than this (about a float's precision) are compared exactly."""


def _exact_number(parsed: list[Any]) -> tuple[Any, float] | None:
    """(expression, size) when math-verify's parse result is one exact number (``2^{64}``,
    ``\\frac{3}{4}``, ``100!``, ``\\sqrt{2}``); None otherwise (symbols, floats, sets, percentages,
    which math-verify reads in its own way)."""
    import sympy

    exprs = [e for e in parsed if not isinstance(e, str)]
    if len(exprs) != 1 or not isinstance(exprs[0], sympy.Basic) or exprs[0].has(sympy.UnevaluatedExpr):
        return None
    size = exact_size(exprs[0])
    return None if size is None else (exprs[0], size)


def _compare_exactly(gold: list[Any], predicted: list[Any]) -> bool | None:
    """Whether two exact numbers are equal, when both are rational and one has more than
    ``EXACT_DIGITS`` digits; None otherwise (math-verify compares). Beyond a float's precision
    math-verify's numeric comparison no longer decides and its symbolic one (``simplify``) can run
    for minutes on a 1,000-digit integer; for exact rationals equality is exact. Called only under
    the size limit, so computing the values is cheap."""
    g, p = _exact_number(gold), _exact_number(predicted)
    if g is None or p is None or max(g[1], p[1]) <= EXACT_DIGITS:
        return None
    a, b = g[0].doit(), p[0].doit()
    if not (a.is_Rational and b.is_Rational):
        return None  # algebraic numbers have no single written form: math-verify compares
    return bool(a == b)


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
        if _same_tree(gold, predicted):  # math-verify's first comparison too; evaluates nothing
            return 1.0
        big = too_large(gold, limit)
        if big_answer is not None or big is not None:
            big_reference = big_reference or big
            continue
        exact = _compare_exactly(gold, predicted)
        if exact is not None:
            if exact:
                return 1.0
            continue
        if verify(gold, predicted, float_rounding=rounding, timeout_seconds=None):
            return 1.0
    if big_answer is not None:
        raise CheckRefused(f"answer too large to evaluate: {big_answer} (max_digits {_count(limit)})")
    if big_reference is not None:
        raise CheckRefused(
            f"reference too large to evaluate: it would have about {_count(big_reference.size + 1)} digits "
            f"(max_digits {_count(limit)})"
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
