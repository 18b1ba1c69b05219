"""The verifier engine end to end: real worker processes, real timeouts, real crashes."""

from __future__ import annotations

import asyncio
import time

import pytest

from rewardserve.errors import InvalidInput, NotReady
from rewardserve.metrics import Metrics
from rewardserve.verifiers import CheckConfig, CheckItem, VerifierBackboneConfig, VerifierEngine

FN = "tests.verifier_functions"
TIMEOUT = 3.0  # generous: a loaded shared machine must not time out a real check


@pytest.fixture(scope="module")
def metrics():
    return Metrics()


@pytest.fixture(scope="module")
def engine(metrics):
    cfg = VerifierBackboneConfig.model_validate(
        {
            "kind": "verifier",
            "timeout_s": TIMEOUT,
            "workers": 2,
            "models": {
                "correct": {"verifier": "math"},
                "unguarded": {"verifier": "math", "max_digits": None},
                "exact": {"verifier": "exact_match"},
                "formatted": {"verifier": "regex", "pattern": r"(?s)^<think>.*</think>\s*\S"},
                "valid_json": {"verifier": "json"},
                "choice": {"verifier": "choice", "missing_label": "skip"},
                "contains": {"verifier": f"{FN}:contains"},
                "as_dict": {"verifier": f"{FN}:as_dict", "value": 0.75, "needs_label": False},
                "length": {"verifier": f"{FN}:no_label", "needs_label": False},
                "out_of_range": {"verifier": f"{FN}:out_of_range", "needs_label": False},
                "raises": {"verifier": f"{FN}:raises", "needs_label": False},
                "not_a_number": {"verifier": f"{FN}:not_a_number", "needs_label": False},
                "spins": {"verifier": f"{FN}:spins", "needs_label": False},
                "sleeps": {"verifier": f"{FN}:sleeps", "needs_label": False},
                "exits": {"verifier": f"{FN}:exits", "needs_label": False},
                "hangs_in_c": {"verifier": f"{FN}:hangs_in_c", "needs_label": False},
                "leaks": {"verifier": f"{FN}:leaks"},
                "mv_defaults": {"verifier": f"{FN}:math_verify_defaults"},
            },
        }
    )
    eng = VerifierEngine.from_config(cfg, metrics=metrics)
    eng.start()
    yield eng
    eng.stop()


def run(coro):
    return asyncio.run(coro)


def scores(results):
    return [r.score for r in results]


def test_math_checks_in_the_pool_keep_item_order(engine):
    items = [CheckItem(f"so the answer is \\boxed{{{a}}}", str(b)) for a, b in [(1, 1), (2, 3), ("\\frac{1}{2}", 0.5)]]
    items = items * 7  # several chunks
    out = run(engine.score(items, ["correct"]))
    assert list(out) == ["correct"]
    assert scores(out["correct"]) == [1.0, 0.0, 1.0] * 7
    assert all(r.warning is None for r in out["correct"])


def test_a_user_function_may_use_signal_alarm(engine):
    # math-verify's own timeouts use signal.alarm, which works only in a main thread: the workers' is one
    out = run(engine.score([CheckItem("\\boxed{0.5}", "\\frac{1}{2}"), CheckItem("\\boxed{3}", "4")], ["mv_defaults"]))
    assert scores(out["mv_defaults"]) == [1.0, 0.0]
    assert all(r.warning is None for r in out["mv_defaults"])


def test_labels_in_every_shape(engine):
    schema = {"type": "object", "required": ["a"]}
    items = [
        CheckItem("\\boxed{7}", ["6", "7"]),  # a list of accepted answers
        CheckItem("\\boxed{7}", 7),  # a number
        CheckItem('{"a": 1}', schema),  # a JSON Schema
        CheckItem('{"b": 1}', schema),
        CheckItem("The answer is (B)", "B"),
        CheckItem("The answer is (B)", ["A", "C"]),
    ]
    out = run(engine.score(items, ["correct", "valid_json", "choice", "contains", "exact"]))
    assert scores(out["correct"])[:2] == [1.0, 1.0]
    assert scores(out["valid_json"]) == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert scores(out["choice"])[4:] == [1.0, 0.0]
    assert scores(out["contains"])[1] == 1.0  # str(7) is in "\boxed{7}"
    assert scores(out["exact"])[1] == 0.0


def test_missing_labels_are_an_error_or_skipped_per_model(engine):
    items = [CheckItem("<think>x</think> 3", "3"), CheckItem("<think>x</think> (B)")]
    with pytest.raises(InvalidInput, match="item 1: model 'correct'"):
        run(engine.score(items, ["formatted", "correct"]))
    assert engine.missing_labels(items, ["correct", "choice", "formatted"]) == [(1, "correct"), (1, "choice")]
    out = run(engine.score(items, ["formatted", "choice", "valid_json"]))
    assert scores(out["formatted"]) == [1.0, 1.0]  # needs no label
    assert out["choice"][1].skipped and "no label" in out["choice"][1].warning
    assert out["choice"][0].score == 0.0 and not out["choice"][0].skipped


def test_user_functions_verl_style(engine):
    items = [CheckItem("abc", "b"), CheckItem("abcdefghijklmnop", "z")]
    out = run(engine.score(items, ["contains", "as_dict", "length"]))
    assert scores(out["contains"]) == [1.0, 0.0]
    assert scores(out["as_dict"]) == [0.75, 0.75]  # {"score": ...} and a free option from the config
    assert scores(out["length"]) == [0.3, 1.0]


def test_a_failing_user_function_is_a_warning_not_an_exception(engine, metrics):
    items = [CheckItem("0.5"), CheckItem("7"), CheckItem("-1"), CheckItem("nan")]
    out = run(engine.score(items, ["out_of_range", "raises", "not_a_number"]))
    assert scores(out["out_of_range"]) == [0.5, 1.0, 0.0, 0.0]
    assert [r.warning is None for r in out["out_of_range"]] == [True, False, False, False]
    assert all(
        r.score == 0.0 and "'raises'" in r.warning and "ValueError: bad solution" in r.warning for r in out["raises"]
    )
    assert all("not a number" in r.warning for r in out["not_a_number"])
    assert metrics.check_failures.labels("raises", "error")._value.get() >= 4
    assert metrics.check_failures.labels("out_of_range", "out_of_range")._value.get() >= 3


def test_a_warning_never_shows_the_label(engine):
    out = run(engine.score([CheckItem("41", "secret-answer-42"), CheckItem("41", ["key-a", "key-b"])], ["leaks"]))
    first, second = (r.warning for r in out["leaks"])
    assert "AssertionError: expected <label>, got 41" in first and "secret" not in first
    assert "key-a" not in second and "key-b" not in second


@pytest.mark.parametrize("model,trigger", [("spins", "spin"), ("sleeps", "sleep"), ("hangs_in_c", "hang")])
def test_a_hung_check_times_out_and_the_pool_goes_on(engine, metrics, model, trigger):
    before = metrics.check_timeouts.labels(model)._value.get()
    items = [CheckItem("ok")] * 5 + [CheckItem(trigger)] + [CheckItem("ok")] * 5
    t0 = time.monotonic()
    out = run(engine.score(items, [model]))
    elapsed = time.monotonic() - t0
    assert scores(out[model]) == [1.0] * 5 + [0.0] + [1.0] * 5
    assert f"check {model!r} timed out after {TIMEOUT:g} s" in out[model][5].warning
    assert all(r.warning is None for i, r in enumerate(out[model]) if i != 5)
    assert elapsed < 30  # killed, not waited for (the checks sleep or spin for an hour)
    assert metrics.check_timeouts.labels(model)._value.get() == before + 1
    # the pool works after the kill, with every worker
    out = run(engine.score([CheckItem(f"\\boxed{{{i}}}", str(i)) for i in range(20)], ["correct"]))
    assert scores(out["correct"]) == [1.0] * 20


def test_a_worker_that_dies_is_replaced_and_the_item_names_it(engine, metrics):
    items = [CheckItem("ok"), CheckItem("exit"), CheckItem("ok"), CheckItem("exit"), CheckItem("ok")]
    out = run(engine.score(items, ["exits"]))
    assert scores(out["exits"]) == [1.0, 0.0, 1.0, 0.0, 1.0]
    for r in (out["exits"][1], out["exits"][3]):
        assert "'exits'" in r.warning and "crashed" in r.warning and "code 3" in r.warning
    assert metrics.check_failures.labels("exits", "crashed")._value.get() >= 2
    out = run(engine.score([CheckItem("ok")] * 8, ["exits", "length"]))
    assert scores(out["exits"]) == [1.0] * 8


def test_math_too_large_to_evaluate_scores_0_with_the_reason(engine, metrics):
    before = metrics.check_failures.labels("correct", "refused")._value.get()
    timeouts = metrics.check_timeouts.labels("correct")._value.get()
    towers = ["\\boxed{9^{9^{9^{9}}}}", "\\boxed{10^{10^{10^{10}}}}", "\\boxed{7^{7^{7^{7^{7}}}}}"]
    items = [CheckItem("\\boxed{2}", "2")] + [CheckItem(t, "5") for t in towers] + [CheckItem("\\boxed{3}", "3")]
    out = run(engine.score(items, ["correct"]))
    assert scores(out["correct"]) == [1.0, 0.0, 0.0, 0.0, 1.0]
    for r, culprit in zip(out["correct"][1:4], ["9**(9**9)", "10**(10**10)", "7**(7**7)"]):
        assert r.warning.startswith(f"check 'correct' scored 0: answer too large to evaluate: {culprit} would have ")
    assert metrics.check_failures.labels("correct", "refused")._value.get() == before + 3
    assert metrics.check_timeouts.labels("correct")._value.get() == timeouts  # refused, not timed out
    # a reference too large: the warning does not quote it
    out = run(engine.score([CheckItem("\\boxed{5}", "10^{10^{10}}")], ["correct"]))
    assert out["correct"][0].score == 0.0
    assert "reference too large to evaluate" in out["correct"][0].warning and "10^" not in out["correct"][0].warning


def test_math_that_never_finishes_is_a_timeout(engine):
    # without the size guard (max_digits: null) sympy computes 9^(9^9) for ever: the timer and the kill end it
    items = [CheckItem("\\boxed{2}", "2"), CheckItem("\\boxed{9^{9^{9^{9}}}}", "1"), CheckItem("\\boxed{3}", "3")]
    out = run(engine.score(items, ["unguarded"]))
    assert scores(out["unguarded"]) == [1.0, 0.0, 1.0]
    assert "check 'unguarded' timed out" in out["unguarded"][1].warning


def test_the_event_loop_keeps_running_while_a_check_hangs(engine):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        t0 = time.monotonic()
        out, other = await asyncio.gather(
            engine.score([CheckItem("hang")], ["hangs_in_c"]),
            engine.score([CheckItem("\\boxed{1}", "1")], ["correct"]),
        )
        elapsed = time.monotonic() - t0
        t.cancel()
        return out, other, ticks, elapsed

    out, other, ticks, elapsed = run(main())
    assert out["hangs_in_c"][0].score == 0.0
    assert other["correct"][0].score == 1.0  # another request went on meanwhile
    # the loop ran its 10 ms ticker throughout the hang (≥ TIMEOUT): at least half the ticks it could
    assert ticks >= 0.5 * elapsed / 0.011


def test_concurrent_requests_share_the_pool(engine):
    async def main():
        reqs = [
            engine.score([CheckItem(f"\\boxed{{{k + i}}}", str(k + i)) for i in range(10)], ["correct"])
            for k in range(6)
        ]
        return await asyncio.gather(*reqs)

    for out in run(main()):
        assert scores(out["correct"]) == [1.0] * 10


def test_describe(engine):
    d = engine.describe()
    assert d["correct"] == {
        "kind": "verifier",
        "verifier": "math",
        "needs": ["label"],
        "epsilon": 1e-3,
        "missing_label": "error",
        "timeout_s": TIMEOUT,
    }
    assert d["formatted"]["needs"] == []
    assert d["choice"]["missing_label"] == "skip"


def test_unknown_model_and_not_started():
    eng = VerifierEngine({"m": CheckConfig(verifier="json")}, workers=1, timeout_s=1)
    with pytest.raises(NotReady, match="not started"):
        run(eng.score([CheckItem("{}")]))
    eng.start()
    try:
        with pytest.raises(KeyError, match="nope"):
            run(eng.score([CheckItem("{}")], ["nope"]))
        assert scores(run(eng.score([CheckItem("{}"), CheckItem("{")]))["m"]) == [1.0, 0.0]
    finally:
        eng.stop()


def test_stop_ends_checks_in_flight():
    eng = VerifierEngine({"sleeps": CheckConfig(verifier=f"{FN}:sleeps", needs_label=False)}, workers=1, timeout_s=60)
    eng.start()

    async def main():
        pending = asyncio.create_task(eng.score([CheckItem("sleep"), CheckItem("ok")]))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(eng.stop)
        out = await asyncio.wait_for(pending, 30)
        with pytest.raises(NotReady):
            await eng.score([CheckItem("ok")])
        return out

    out = run(main())
    assert all(r.score == 0.0 and "stopped" in r.warning for r in out["sleeps"])
