"""The built-in checks as pure functions (run here in the main thread, as in a worker)."""

from __future__ import annotations

import pytest

from rewardserve.verifiers.checks import (
    CheckRefused,
    choice_check,
    exact_match,
    extract_choice,
    json_check,
    math_check,
    normalize_text,
    regex_check,
)
from rewardserve.verifiers.math_size import TooLarge, exact_size

# (response, label, expected score): real answers as models write them
MATH_CASES = [
    # fractions, decimals, boxed
    ("The answer is $\\boxed{\\frac{1}{2}}$.", "0.5", 1.0),
    ("So we get \\boxed{0.5}", "\\frac{1}{2}", 1.0),
    ("1/2", "\\frac12", 1.0),
    ("The result is $\\dfrac{3}{4}$", "0.75", 1.0),
    ("\\boxed{\\frac{2}{4}}", "1/2", 1.0),
    ("Therefore the answer is \\boxed{42}.", "42", 1.0),
    ("Therefore the answer is \\boxed{42}.", 42, 1.0),
    ("We find $x = 3$.", "3", 1.0),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1.0),
    ("\\boxed{10\\%}", "0.1", 1.0),
    # sets and intervals
    ("The solutions are $\\boxed{\\{1, 2\\}}$", "\\{2, 1\\}", 1.0),
    ("\\boxed{(0, 1]}", "(0,1]", 1.0),
    ("\\boxed{[0, 1]}", "(0,1]", 0.0),
    ("\\boxed{\\{1, 3\\}}", "\\{1, 2\\}", 0.0),
    # several boxed answers are one set answer (math-verify's reading), wrong answers score 0
    ("First \\boxed{41}, no wait: \\boxed{42}", "42", 0.0),
    ("The roots are \\boxed{2} and \\boxed{3}", "\\{2, 3\\}", 1.0),
    ("The answer is $3$, or in decimals \\boxed{3.0}", "3", 1.0),
    ("\\boxed{43}", "42", 0.0),
    ("The answer is \\boxed{\\frac{1}{3}}", "0.5", 0.0),
    ("0.33", "1/3", 0.0),
    ("I do not know.", "42", 0.0),
    ("", "42", 0.0),
    # a list of accepted answers
    ("\\boxed{7}", ["6", "7"], 1.0),
    ("\\boxed{8}", ["6", "7"], 0.0),
]


@pytest.mark.parametrize("response,label,expected", MATH_CASES)
def test_math_equivalences_and_non_equivalences(response, label, expected):
    assert math_check(response, label) == expected


# answers whose exact value sympy would compute forever: refused before anything is evaluated
TOO_LARGE = [
    ("Let me compute. The answer is \\boxed{9^{9^{9^{9}}}}.", "9**(9**9)"),
    ("Let me compute. The answer is \\boxed{10^{10^{10^{10}}}}.", "10**(10**10)"),
    ("Let me compute. The answer is \\boxed{7^{7^{7^{7^{7}}}}}.", "7**(7**7)"),
    ("The answer is 9^9^9^9", "9**(9**9)"),  # plain text, math-verify's expression reading
    ("answer: 9**9**9**9", "9**(9**9)"),
    ("\\boxed{(10^{10})!}", "factorial(10**10)"),
    ("\\boxed{\\binom{10^{10}}{10^5}}", "binomial(10**10, 10**5)"),
    ("\\boxed{\\sqrt{2}^{10^{10}}}", "(sqrt(2))**(10**10)"),
    ("\\boxed{\\frac{1}{2^{10^{10}}}}", "2**(10**10)"),
    ("\\boxed{2^{-10^{10}}}", "2**(-1*10**10)"),
    ("\\boxed{\\lfloor 2^{10^{10}}/3 \\rfloor}", "2**(10**10)"),
    ("The roots are $\\boxed{\\{1, 9^{9^9}\\}}$", "9**(9**9)"),  # inside a set
    ("\\boxed{2^{10^{10}} x}", "2**(10**10)"),  # beside a symbol
]


@pytest.mark.parametrize("response,culprit", TOO_LARGE)
def test_an_answer_too_large_to_evaluate_is_refused_with_the_reason(response, culprit):
    with pytest.raises(CheckRefused) as e:
        math_check(response, "5")
    assert str(e.value).startswith(f"answer too large to evaluate: {culprit} would have about ")
    assert "digits (max_digits 100,000)" in str(e.value)


def test_a_refused_answer_that_is_the_reference_as_written_scores_1():
    assert math_check("\\boxed{9^{9^{9^{9}}}}", "9^{9^{9^{9}}}") == 1.0
    assert math_check("\\boxed{9^{9^{9^{9}}}}", ["3", "9^{9^{9^{9}}}"]) == 1.0
    with pytest.raises(CheckRefused, match="answer too large"):
        math_check("\\boxed{9^{9^{9^{9}}}}", "9^{9^{9^{8}}}")  # not the same tree: not evaluated, 0


def test_a_reference_too_large_to_evaluate_is_refused_without_quoting_it():
    with pytest.raises(CheckRefused) as e:
        math_check("\\boxed{5}", "10^{10^{10}}")
    assert str(e.value).startswith("reference too large to evaluate: it would have about 1e+10 digits")
    assert "10^" not in str(e.value) and "10**" not in str(e.value)
    # another accepted answer still counts
    assert math_check("\\boxed{5}", ["10^{10^{10}}", "5"]) == 1.0


# large but evaluable numbers, and huge exponents that evaluate to something small, are compared as before
LARGE_BUT_FINE = [
    ("\\boxed{2^{2023}}", "2^{2023}", 1.0),
    ("\\boxed{2^{2023}-1}", "2^{2023}-1", 1.0),
    ("\\boxed{100!}", "100!", 1.0),
    ("\\boxed{2^{10}}", "1024", 1.0),
    ("\\boxed{2^{10}}", "1023", 0.0),
    ("\\boxed{3^{3^3}}", "7625597484987", 1.0),
    ("\\boxed{2^{2^{2^{2^{2}}}}}", "2^{65536}", 1.0),  # 19,729 digits: under the limit
    ("\\boxed{1^{10^{100}}}", "1", 1.0),
    ("\\boxed{(-1)^{10^{100}}}", "1", 1.0),
    ("\\boxed{2^{10^{-100}}}", "1", 0.0),  # 2^(1e-100) is not 1, and is not refused
    ("\\boxed{0.5^{10^{10}}}", "0", 0.0),  # a float power: mpmath, not an exact number
    ("\\boxed{x^{10}}", "x^{10}", 1.0),
    # exact numbers beyond a float's precision are compared exactly (math-verify's simplify ran for
    # minutes on the first; its 15-digit numeric comparison would call the last equal)
    ("\\boxed{2^{2^{12}}}", "2^{4096}", 1.0),
    ("\\boxed{2^{2^{10}}}", "2^{1024}+1", 0.0),
    ("\\boxed{\\frac{2^{100}}{4^{50}}}", "1", 1.0),
    ("\\boxed{\\frac{10^{20}}{10^{20}+1}}", "1", 0.0),
    ("\\boxed{\\frac{3}{4}}", "0.75", 1.0),
]


@pytest.mark.parametrize("response,label,expected", LARGE_BUT_FINE)
def test_large_numbers_under_the_limit_are_still_compared(response, label, expected):
    assert math_check(response, label) == expected


def test_max_digits_option():
    with pytest.raises(CheckRefused, match=r"2\*\*2023 would have about 610 digits \(max_digits 500\)"):
        math_check("\\boxed{2^{2023}}", "2^{2023}+1", max_digits=500)
    assert math_check("\\boxed{2^{2023}}", "2^{2023}", max_digits=500) == 1.0  # the same tree
    assert math_check("\\boxed{2^{1000}}", "2^{1000}", max_digits=500) == 1.0


def test_exact_size_bounds_the_digits_sympy_would_compute():
    import math

    import sympy

    def size(text, limit=math.inf):
        return exact_size(sympy.parse_expr(text, evaluate=False), limit)

    for text in ["2**2023", "3**(3**3)", "100*7**50 + 3/7", "factorial(100)", "binomial(100, 50)", "(2**10)**20"]:
        exact = sympy.sympify(text)  # small enough to compute here
        digits = max(math.log10(abs(exact.p)), math.log10(exact.q))
        assert digits <= size(text) <= digits + 10, text
    assert size("x**(10**10)") is None and size("pi**2") is None and size("1.5**10") is None
    assert size("1**(10**100)") == 0.0 and size("(-1)**(10**100)") == 0.0
    with pytest.raises(TooLarge) as e:
        size("3 + x*9**(9**(9**9))", limit=1000)
    assert str(e.value.expr) == "9**(9**9)" and 3.6e8 < e.value.size < 3.8e8


@pytest.mark.parametrize(
    "response,label,expected",
    [
        ("Paris", "paris", 1.0),
        ("  Paris. ", "Paris", 1.0),
        ('"PARIS!"', "paris", 1.0),
        ("New   York", "new york", 1.0),
        ("ｐａｒｉｓ", "paris", 1.0),  # full-width letters (NFKC)
        ("3.14", "314", 0.0),
        ("Paris, France", "Paris", 0.0),
        ("London", ["Paris", "London"], 1.0),
        ("42", 42, 1.0),
    ],
)
def test_exact_match_normalises_case_space_and_surrounding_punctuation(response, label, expected):
    assert exact_match(response, label) == expected


def test_normalize_text():
    assert normalize_text("  **The  Answer**. ") == "the  answer".replace("  ", " ")


def test_regex_search_and_full():
    fmt = r"(?s)^<think>.*</think>\s*\S"
    assert regex_check("<think>hmm</think> 42", None, pattern=fmt) == 1.0
    assert regex_check("42 <think>hmm</think>", None, pattern=fmt) == 0.0
    assert regex_check("abc 123", None, pattern=r"\d+", mode="search") == 1.0
    assert regex_check("abc 123", None, pattern=r"\d+", mode="full") == 0.0
    assert regex_check("123", "ignored", pattern=r"\d+", mode="full") == 1.0


SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


@pytest.mark.parametrize(
    "response,label,expected",
    [
        ('{"a": 1}', None, 1.0),
        ("[1, 2]", None, 1.0),
        ("{a: 1}", None, 0.0),
        ("", None, 0.0),
        ('```json\n{"a": 1}\n```', None, 1.0),
        ('{"a": 1}', SCHEMA, 1.0),
        ('{"a": "x"}', SCHEMA, 0.0),
        ("{}", SCHEMA, 0.0),
        ("not json", SCHEMA, 0.0),
    ],
)
def test_json_parses_and_validates_a_schema_label(response, label, expected):
    assert json_check(response, label) == expected


@pytest.mark.parametrize(
    "response,chosen",
    [
        ("The answer is (B).", "B"),
        ("B", "B"),
        ("B.", "B"),
        ("(B)", "B"),
        ("**B**", "B"),
        ("B. Paris is the capital", "B"),
        ("Answer: C", "C"),
        ("answer: c", None),  # lowercase letters are words, not choices
        ("Let me think. (A) is wrong because of X; **C** fits best.", "C"),
        ("Option A looks tempting, but the answer is D", "D"),
        ("The final answer is $\\boxed{D}$", "D"),
        ("I think the answer is a tricky one", None),
        ("A bird flew over", None),
        ("No idea.", None),
    ],
)
def test_choice_extracts_the_chosen_letter(response, chosen):
    assert extract_choice(response) == chosen


def test_choice_scores_against_the_label():
    assert choice_check("The answer is (B)", "B") == 1.0
    assert choice_check("The answer is (B)", "b") == 1.0
    assert choice_check("The answer is (B)", "(B)") == 1.0
    assert choice_check("The answer is (B)", "C") == 0.0
    assert choice_check("The answer is (B)", ["A", "B"]) == 1.0
    assert choice_check("Nothing chosen", "B") == 0.0
    assert choice_check("The answer is (K)", "K", letters="ABCDEFGHIJK") == 1.0
