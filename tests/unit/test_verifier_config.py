"""The verifier backbone's config, the settling of worker outcomes and the check transform."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from rewardserve import lsc
from rewardserve.verifiers import CheckConfig, CheckResult, VerifierBackboneConfig, settle


def backbone(**models):
    return VerifierBackboneConfig.model_validate({"kind": "verifier", "models": models})


def test_the_issue_example_loads_with_defaults():
    cfg = VerifierBackboneConfig.model_validate(
        {
            "kind": "verifier",
            "timeout_s": 5,
            "workers": 2,
            "models": {
                "correct": {"verifier": "math"},
                "formatted": {"verifier": "regex", "pattern": r"(?s)^<think>.*</think>\s*\S"},
                "valid_json": {"verifier": "json"},
                "choice": {"verifier": "choice"},
                "mine": {"verifier": "tests.verifier_functions:contains", "epsilon": 0.01, "missing_label": "skip"},
            },
        }
    )
    m = cfg.models
    assert m["correct"].epsilon == 1e-3 and m["correct"].missing_label == "error"
    assert [m[k].label_required for k in m] == [True, False, False, True, True]
    assert m["formatted"].options() == {"pattern": r"(?s)^<think>.*</think>\s*\S", "mode": "search"}
    assert m["mine"].epsilon == 0.01 and not m["mine"].is_builtin


def test_free_options_reach_the_check():
    c = CheckConfig.model_validate({"verifier": "choice", "letters": "ABCD"})
    assert c.options() == {"letters": "ABCD"}
    fn = "tests.verifier_functions:no_label"
    assert CheckConfig.model_validate({"verifier": fn, "needs_label": False}).label_required is False
    assert CheckConfig.model_validate({"verifier": fn, "weight": 3}).options() == {"weight": 3}


@pytest.mark.parametrize(
    "model,message",
    [
        ({"verifier": "regex", "pattern": "(unclosed"}, "does not compile"),
        ({"verifier": "regex"}, "needs 'pattern'"),
        ({"verifier": "math", "pattern": "x"}, "'pattern' is for the regex verifier"),
        ({"verifier": "maths"}, "unknown verifier 'maths'"),
        ({"verifier": "no_such_pkg.rewards:score"}, "cannot import 'no_such_pkg.rewards'"),
        ({"verifier": "tests.verifier_functions:nope"}, "has no callable 'nope'"),
        ({"verifier": "math", "epsilon": 0}, "greater than 0"),
        ({"verifier": "math", "epsilon": 1}, "less than 1"),
        ({"verifier": "math", "missing_label": "ignore"}, "'error' or 'skip'"),
    ],
)
def test_config_errors_name_the_model_and_the_problem(model, message):
    with pytest.raises(ValidationError) as e:
        backbone(bad=model)
    assert message in str(e.value)
    assert "bad" in str(e.value)


def test_backbone_level_errors():
    with pytest.raises(ValidationError, match="at least one model"):
        VerifierBackboneConfig.model_validate({"kind": "verifier", "models": {}})
    with pytest.raises(ValidationError, match="timeout_s"):
        VerifierBackboneConfig.model_validate(
            {"kind": "verifier", "timeout_s": 0, "models": {"m": {"verifier": "json"}}}
        )
    with pytest.raises(ValidationError, match="kind"):
        VerifierBackboneConfig.model_validate({"kind": "judge", "models": {"m": {"verifier": "json"}}})


def test_math_max_digits_is_a_positive_integer_or_null():
    assert CheckConfig(verifier="math", max_digits=500).options() == {"max_digits": 500}
    assert CheckConfig(verifier="math", max_digits=None).options() == {"max_digits": None}
    for bad in [0, -5, 1.5, "many", True]:
        with pytest.raises(ValidationError, match="max_digits must be a positive integer or null"):
            CheckConfig(verifier="math", max_digits=bad)


def test_settle_scores_failures_zero_and_clips_with_a_warning():
    assert settle("m", (1.0, None, 0.1), 5) == CheckResult(1.0, None)
    assert settle("m", (0.25, None, 0.1), 5).score == 0.25
    r = settle("correct", (math.nan, "timeout", 5.0), 5)
    assert r.score == 0.0 and "'correct'" in r.warning and "timed out after 5 s" in r.warning
    r = settle("mine", (math.nan, "error: ValueError: boom", 0.0), 5)
    assert r.score == 0.0 and "'mine'" in r.warning and "ValueError: boom" in r.warning
    r = settle("correct", (math.nan, "refused: answer too large to evaluate: 9**(9**9) would have …", 0.001), 5)
    assert r == CheckResult(0.0, "check 'correct' scored 0: answer too large to evaluate: 9**(9**9) would have …")
    for value, clipped in [(1.5, 1.0), (-2.0, 0.0), (math.inf, 1.0), (-math.inf, 0.0), (math.nan, 0.0)]:
        r = settle("mine", (value, None, 0.0), 5)
        assert r.score == clipped and "outside [0, 1]" in r.warning


def test_check_utility_is_log_of_eps_floored_probability():
    eps = 1e-3
    assert float(lsc.check_utility(1.0, eps)) == 0.0
    assert float(lsc.check_utility(0.0, eps)) == pytest.approx(math.log(eps), rel=1e-12)
    assert float(lsc.check_utility(0.5, 0.2)) == pytest.approx(math.log(0.2 + 0.8 * 0.5), rel=1e-12)
    u = lsc.check_utility(np.array([0.0, 0.25, 1.0], dtype=np.float32), 0.01)
    assert u.dtype == np.float64 and np.all(np.diff(u) > 0)
    # out-of-range and non-finite inputs stay finite, within [log eps, 0]
    for raw in [math.nan, -1.0, 2.0, math.inf, -math.inf]:
        v = float(lsc.check_utility(raw, eps))
        assert math.isfinite(v) and math.log(eps) - 1e-12 <= v <= 0.0
    for bad in [0.0, 1.0, -0.1, math.nan]:
        with pytest.raises(ValueError, match="epsilon"):
            lsc.check_utility(0.5, bad)


def test_a_failed_check_contributes_log_eps_to_the_and():
    # a right-and-fluent answer beats a wrong-but-fluent one however fluent the latter is
    u_wrong = float(lsc.check_utility(0.0, 1e-3)) + float(lsc.transform(8.0, 0.0))
    u_right = float(lsc.check_utility(1.0, 1e-3)) + float(lsc.transform(1.0, 0.0))
    assert u_right > u_wrong
