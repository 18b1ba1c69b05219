"""What runs inside a worker process: a chunk of (model, response, label) checks, each under its
own timer, reporting which item it is on through shared memory.

- The worker's initializer receives the models' specs (verifier name and options) and the shared
  progress array; check functions (user functions included) are resolved once per worker.
- Each item runs under ``signal.setitimer(ITIMER_REAL, timeout)`` in the worker's main thread (so
  math-verify's own ``signal.alarm`` use is legal there; its timeouts are off and this timer covers
  the whole check). The timer raises ``ItemTimeout``, a ``BaseException`` so that a user function's
  ``except Exception`` cannot swallow it.
- Before each item the worker writes (item position, start time on the system-wide monotonic clock)
  into its chunk's slot of the progress array. A check stuck in C code (a huge integer power in
  sympy, a catastrophic regex) never sees the timer's exception: the engine reads the slot, kills
  the worker past ``timeout + grace`` and knows exactly which item was to blame; the same slot names
  the item when a worker dies (``os._exit``, a segfault).
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .checks import BUILTIN_CHECKS, CheckFunction, CheckRefused, warm_math

# per model: (verifier, options)
Specs = Mapping[str, tuple[str, Mapping[str, Any]]]
# per item: (score or NaN, error message or None, seconds)
ItemOutcome = tuple[float, str | None, float]

_FUNCTIONS: dict[str, tuple[CheckFunction, dict[str, Any], bool]] = {}
_PROGRESS: Any = None  # multiprocessing RawArray('d', 2 * slots): [position, started] per slot


class ItemTimeout(BaseException):
    """The item's timer fired."""


def _on_alarm(signum: int, frame: object) -> None:
    raise ItemTimeout()


def init_worker(specs: Specs, progress: Any, preload: Sequence[str] = ()) -> None:
    """Pool initializer: resolve every model's check function once, keep the progress array."""
    global _PROGRESS
    from .config import load_user_function

    _PROGRESS = progress
    _FUNCTIONS.clear()
    for model, (verifier, options) in specs.items():
        builtin = verifier in BUILTIN_CHECKS
        fn = BUILTIN_CHECKS[verifier] if builtin else load_user_function(verifier)
        _FUNCTIONS[model] = (fn, dict(options), builtin)
    if any(v == "math" for v, _ in specs.values()):
        warm_math()  # once here (a no-op when the fork server did it), not inside the first item's timer


def _score_of(value: Any) -> float:
    """A check's return value as a float: a number, or a verl-style dict's ``score``."""
    if isinstance(value, Mapping):
        if "score" not in value:
            raise ValueError(f"the check returned a dict without 'score' (keys: {sorted(value)[:5]})")
        value = value["score"]
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, int | float):
        try:
            return float(value)  # numpy scalars, 0-d tensors
        except (TypeError, ValueError):
            raise ValueError(f"the check returned {type(value).__name__}, not a number") from None
    return float(value)


def redact(message: str, label: Any) -> str:
    """The message with every appearance of the label (or of an item of a list label) replaced by
    ``<label>``: labels may be secret answer keys and warnings are logged and returned."""
    for part in label if isinstance(label, list | tuple) else [label]:
        text = part if isinstance(part, str) else None if part is None else str(part)
        if text and text.strip():
            message = message.replace(text, "<label>")
    return message


def run_one(model: str, response: str, label: Any, timeout_s: float) -> ItemOutcome:
    fn, options, builtin = _FUNCTIONS[model]
    start = time.perf_counter()
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})  # in case an earlier check blocked it
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        value = fn(response, label, **options)
        score = _score_of(value)
        error = None
    except ItemTimeout:
        score, error = math.nan, "timeout"
    except CheckRefused as e:  # the check would not evaluate this input (math: an answer too large)
        score, error = math.nan, f"refused: {redact(str(e), label)}"[:500]
    except Exception as e:
        score, error = math.nan, f"error: {type(e).__name__}: {redact(str(e), label)}"[:500]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return score, error, time.perf_counter() - start


def run_chunk(slot: int, items: Sequence[tuple[str, str, Any]], timeout_s: float) -> list[ItemOutcome]:
    """Run a chunk of (model, response, label) checks in order, reporting progress in ``slot``."""
    out: list[ItemOutcome] = []
    progress = _PROGRESS if slot >= 0 else None
    for pos, (model, response, label) in enumerate(items):
        if progress is not None:  # the engine reads position, start, position again
            progress[2 * slot] = -1
            progress[2 * slot + 1] = time.monotonic()
            progress[2 * slot] = pos
        try:
            out.append(run_one(model, response, label, timeout_s))
        except ItemTimeout:  # the timer fired between the check's end and its cancellation
            out.append((math.nan, "timeout", timeout_s))
    if progress is not None:
        progress[2 * slot] = -1
    return out
