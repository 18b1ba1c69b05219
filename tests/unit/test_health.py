"""ForwardHealth on a fake clock: failure streaks and hung forwards turn readiness, then liveness;
one success or the hung forward's return heals both."""

from __future__ import annotations

import pytest

from rewardserve.health import ForwardHealth


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fail(h: ForwardHealth, backbone: str = "enc") -> None:
    with pytest.raises(RuntimeError), h.watch(backbone):
        raise RuntimeError("CUDA error (injected)")


def test_a_failure_streak_turns_readiness_then_liveness_and_one_success_heals():
    clock = Clock()
    h = ForwardHealth(max_consecutive_failures=3, max_forward_seconds=60, liveness_grace_seconds=30, clock=clock)
    fail(h)
    fail(h)
    assert h.not_ready() is None and h.failing_backbones() == []
    fail(h)
    assert "backbone 'enc': the last 3 forward passes failed (last: RuntimeError: CUDA error (injected))" in (
        h.not_ready() or ""
    )
    assert h.failing_backbones() == ["enc"] and h.not_live() is None
    clock.now += 29.9
    fail(h)  # the streak goes on; liveness counts from when it reached the threshold
    assert h.not_live() is None
    clock.now += 0.1
    assert "for over liveness_grace_seconds=30" in (h.not_live() or "")
    with h.watch("enc"):
        pass
    assert h.not_ready() is None and h.not_live() is None and h.failing_backbones() == []


def test_a_hung_forward_turns_readiness_then_liveness_and_its_return_heals():
    clock = Clock()
    h = ForwardHealth(max_consecutive_failures=3, max_forward_seconds=10, liveness_grace_seconds=5, clock=clock)
    with h.watch("dec"):
        clock.now += 10.0
        assert h.not_ready() is None  # at the limit, not past it
        clock.now += 0.1
        assert "a forward pass has been running for 10.1 s (limit max_forward_seconds=10)" in (h.not_ready() or "")
        assert h.not_live() is None
        clock.now += 5.0
        assert h.not_live() is not None
    assert h.not_ready() is None and h.not_live() is None


def test_backbones_are_independent_and_a_busy_one_is_not_rechecked():
    clock = Clock()
    h = ForwardHealth(max_consecutive_failures=1, clock=clock)
    fail(h, "a")
    with h.watch("b"):
        pass
    assert h.failing_backbones() == ["a"]
    with h.watch("a"):  # a forward of 'a' is running: no check forward on top of it
        assert h.failing_backbones() == []


def test_a_cancelled_forward_is_neither_a_failure_nor_a_success():
    h = ForwardHealth(max_consecutive_failures=1, clock=Clock())
    fail(h)
    with pytest.raises(KeyboardInterrupt), h.watch("enc"):
        raise KeyboardInterrupt
    assert h.failing_backbones() == ["enc"]
