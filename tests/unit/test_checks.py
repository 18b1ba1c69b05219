"""The built-in checks as pure functions (run here in the main thread, as in a worker)."""

from __future__ import annotations

import pytest

from rewardserve.verifiers.checks import (
    choice_check,
    exact_match,
    extract_choice,
    json_check,
    math_check,
    normalize_text,
    regex_check,
)

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
