"""How large an exact number sympy would compute from math-verify's parse of an answer, before
anything is evaluated, and an exact comparison for large rationals (the ``math`` check's guards).

math-verify parses ``\\boxed{9^{9^{9^{9}}}}`` into an unevaluated sympy tree in milliseconds; its
comparison then asks sympy for the value (``doit()``), which computes ``9^{9^{9}}`` (369 million
digits) in C, where no timer reaches. ``exact_size`` bounds the digits of every exact-number
subexpression from the tree alone, so the check can refuse such an answer before it is compared.
Pure functions; sympy is imported inside them (it loads in the worker processes only).
"""

from __future__ import annotations

import math
from typing import Any


class TooLarge(Exception):
    """``exact_size`` met a subexpression whose exact value would pass the limit."""

    def __init__(self, expr: Any, size: float) -> None:
        super().__init__(f"{_show(expr)} would have about {count_digits(size + 1)} digits")
        self.expr, self.size = expr, size


def _show(expr: Any, width: int = 60) -> str:
    try:
        text = str(expr)  # an unevaluated tree prints as written; a huge literal may refuse to
    except ValueError:
        return "a number"
    return text if len(text) <= width else text[: width - 1] + "…"


def count_digits(digits: float) -> str:
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


def same_tree(gold: list[Any], predicted: list[Any]) -> bool:
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


def compare_exactly(gold: list[Any], predicted: list[Any]) -> bool | None:
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
