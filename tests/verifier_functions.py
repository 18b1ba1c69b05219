"""User check functions in the verl style, for the verifier tests (loaded as
``tests.verifier_functions:NAME`` by the worker processes, as an operator's module would be)."""

from __future__ import annotations

import os
import signal
import time


def contains(solution_str, ground_truth, **kw):
    """1.0 when the ground truth appears in the solution."""
    return 1.0 if str(ground_truth) in solution_str else 0.0


def as_dict(solution_str, ground_truth, **kw):
    """verl's dict form, with an option from the config."""
    return {"score": kw.get("value", 0.5), "acc": True}


def no_label(solution_str, ground_truth, **kw):
    """Scores the length of the solution, reads no label."""
    return min(1.0, len(solution_str) / 10)


def out_of_range(solution_str, ground_truth, **kw):
    return float(solution_str)


def raises(solution_str, ground_truth, **kw):
    raise ValueError("bad solution " + solution_str[:10])


def not_a_number(solution_str, ground_truth, **kw):
    return "yes"


def spins(solution_str, ground_truth, **kw):
    """An infinite loop when asked; swallows Exception (not the engine's timer)."""
    while solution_str == "spin":
        try:
            pass
        except Exception:
            pass
    return 1.0


def sleeps(solution_str, ground_truth, **kw):
    if solution_str == "sleep":
        time.sleep(3600)
    return 1.0


def exits(solution_str, ground_truth, **kw):
    """Kills its own process when asked (a segfault or os._exit in native code)."""
    if solution_str == "exit":
        os._exit(3)
    return 1.0


def hangs_in_c(solution_str, ground_truth, **kw):
    """Stuck where no Python-level timer reaches (like a huge integer power inside sympy): the
    timer's signal is blocked, then the call waits."""
    if solution_str == "hang":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(3600)
    return 1.0


def leaks(solution_str, ground_truth, **kw):
    """Raises with the (secret) label in its message."""
    raise AssertionError(f"expected {ground_truth!s}, got {solution_str}")


def math_verify_defaults(solution_str, ground_truth, **kw):
    """verl-style math reward on math-verify with its own signal.alarm timeouts (main thread only)."""
    from math_verify import parse, verify

    return 1.0 if verify(parse(f"${ground_truth}$"), parse(solution_str)) else 0.0


def raises_with_label(solution_str, ground_truth, **kw):
    raise ValueError(f"expected {ground_truth}, got {solution_str[:10]}")
