"""``VerifierEngine``: runs checks in a pebble process pool with a hard per-item timeout.

The asyncio side never runs a check: ``score`` splits the (model, item) pairs into chunks, hands
each chunk to the pool and awaits it, watching the worker's progress slot (see ``worker.py``). A
chunk ends in one of three ways:

- it returns: one outcome per item (timeouts that the worker's own timer caught, and exceptions,
  are already outcomes: score 0 and a warning);
- its current item runs past ``timeout_s + grace_s`` (stuck where the timer cannot reach): the
  engine cancels the task, pebble kills the worker and starts a new one, that item is a timeout and
  the chunk's other unfinished items run again in a new task;
- its worker dies (``os._exit``, a segfault, out of memory): the item it was on is "crashed" and the
  rest run again.

So every item gets a result, and every other item and request goes on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import multiprocessing
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pebble import ProcessExpired, ProcessPool

from ..errors import InvalidInput, NotReady
from ..metrics import Metrics
from .config import CheckConfig, VerifierBackboneConfig
from .worker import ItemOutcome, init_worker, run_chunk

log = logging.getLogger("rewardserve.verifiers")

MAX_CHUNK = 16  # (model, item) pairs per task at most: a task's messaging is shared, re-runs stay cheap
INFLIGHT_PER_WORKER = 3  # tasks handed to the pool per worker: one running, the next ones already queued


@dataclass(frozen=True, slots=True)
class CheckItem:
    """One item to check: the response, its label (any JSON value; None: no label) and its prompt
    (not read by the built-in checks; kept for the adapter and user functions' ``extra_info``)."""

    response: str
    label: Any = None
    prompt: Any = None


@dataclass(frozen=True, slots=True)
class CheckResult:
    """A check's score in [0, 1] (None: skipped, the item had no label under ``missing_label: skip``)
    and a warning when the check did not run cleanly (timeout, crash, error, a score clipped)."""

    score: float | None
    warning: str | None = None

    @property
    def skipped(self) -> bool:
        return self.score is None


def settle(model: str, outcome: ItemOutcome, timeout_s: float) -> CheckResult:
    """One worker outcome as a result: failures score 0 with a warning naming the model and the
    reason; a score outside [0, 1] or not finite is clipped (NaN → 0) with a warning."""
    score, error, _ = outcome
    if error is not None:
        if error == "timeout":
            return CheckResult(0.0, f"check {model!r} timed out after {timeout_s:g} s: score 0")
        if error.startswith("refused: "):
            return CheckResult(0.0, f"check {model!r} scored 0: {error.removeprefix('refused: ')}")
        return CheckResult(0.0, f"check {model!r} failed ({error}): score 0")
    if math.isfinite(score) and 0.0 <= score <= 1.0:
        return CheckResult(score)
    clipped = 0.0 if math.isnan(score) else min(1.0, max(0.0, score))
    return CheckResult(clipped, f"check {model!r} returned {score!r}, outside [0, 1]: clipped to {clipped:g}")


class VerifierEngine:
    """Checks for a set of models, run in ``workers`` processes with a hard ``timeout_s`` per item."""

    def __init__(
        self,
        models: Mapping[str, CheckConfig],
        workers: int = 2,
        timeout_s: float = 5.0,
        *,
        metrics: Metrics | None = None,
        chunk_size: int | None = None,
        grace_s: float | None = None,
        start_method: str = "forkserver",
    ) -> None:
        if not models:
            raise ValueError("a verifier engine needs at least one model")
        self.models = dict(models)
        self.workers = workers
        self.timeout_s = float(timeout_s)
        # past timeout_s the worker's timer should have ended the item; this much later it is killed
        self.grace_s = float(grace_s) if grace_s is not None else min(1.0, max(0.05, 0.2 * self.timeout_s))
        self.chunk_size = chunk_size
        self.metrics = metrics
        self._ctx = multiprocessing.get_context(start_method)
        self._slots_total = 2 * INFLIGHT_PER_WORKER * workers  # recycled FIFO: a freed slot rests a while
        self._progress: Any = None
        self._pool: ProcessPool | None = None
        self._free: asyncio.Queue[int] | None = None
        self._inflight: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_config(cls, config: VerifierBackboneConfig, metrics: Metrics | None = None) -> VerifierEngine:
        return cls(config.models, config.workers, config.timeout_s, metrics=metrics)

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the pool and wait until every worker has loaded the checks (imports math-verify and
        the user functions once per worker). Raises RuntimeError if the workers cannot start."""
        if self._pool is not None:
            return
        if self._ctx.get_start_method() == "forkserver":
            # new workers (a replaced one too) fork from a server that has already imported these
            self._ctx.set_forkserver_preload(["rewardserve.verifiers.preload"])
        self._progress = self._ctx.RawArray("d", 2 * self._slots_total)
        for i in range(self._slots_total):
            self._progress[2 * i] = -1
        specs = {m: (c.verifier, c.options()) for m, c in self.models.items()}
        self._pool = ProcessPool(
            max_workers=self.workers, initializer=init_worker, initargs=(specs, self._progress), context=self._ctx
        )
        warm = [self._pool.schedule(run_chunk, args=(-1, [], self.timeout_s)) for _ in range(self.workers)]
        try:
            for f in warm:
                f.result(timeout=120)
        except Exception as e:
            self.stop()
            raise RuntimeError(f"verifier workers failed to start: {type(e).__name__}: {e}") from e
        if self.metrics is not None:
            self.metrics.checks_loaded(list(self.models))

    def stop(self) -> None:
        """Kill the workers (running checks are abandoned)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()  # type: ignore[no-untyped-call]  # pebble's stop has no annotations
            pool.join(timeout=10)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per model: what /v1/models shows (kind, verifier, what it needs, ε, missing_label)."""
        return {
            m: {
                "kind": "verifier",
                "verifier": c.verifier,
                "needs": ["label"] if c.label_required else [],
                "epsilon": c.epsilon,
                "missing_label": c.missing_label,
                "timeout_s": self.timeout_s,
            }
            for m, c in self.models.items()
        }

    # --- scoring ------------------------------------------------------------------------------

    def missing_labels(self, items: Sequence[CheckItem], models: Sequence[str] | None = None) -> list[tuple[int, str]]:
        """(item index, model) for every item without the label a model needs."""
        names = list(models) if models is not None else list(self.models)
        return [
            (i, m) for m in names if self.models[m].label_required for i, it in enumerate(items) if it.label is None
        ]

    async def score(
        self, items: Sequence[CheckItem], models: Sequence[str] | None = None
    ) -> dict[str, list[CheckResult]]:
        """Check every item with every model (default: all), results in item order per model.

        Raises ``InvalidInput`` naming the first item and model when an item lacks a label that a
        model with ``missing_label: error`` needs; under ``skip`` that result is ``score=None``.
        A check that times out, raises or crashes scores 0 with a warning; it never raises here."""
        if self._pool is None:
            raise NotReady("the verifier engine is not started (VerifierEngine.start())")
        names = list(models) if models is not None else list(self.models)
        for m in names:
            if m not in self.models:
                raise KeyError(f"unknown check model {m!r}")
        results: dict[str, list[CheckResult | None]] = {m: [None] * len(items) for m in names}
        for i, m in self.missing_labels(items, names):
            if self.models[m].missing_label == "error":
                raise InvalidInput(f"item {i}: model {m!r} ({self.models[m].verifier} check) needs a 'label'")
            results[m][i] = CheckResult(None, f"item has no label: model {m!r} is left out of its aggregate")
        tasks = [(m, i) for m in names for i in range(len(items)) if results[m][i] is None]
        if tasks:
            self._bind_loop()
            size = self.chunk_size or max(1, min(MAX_CHUNK, math.ceil(len(tasks) / (2 * self.workers))))
            chunks = [tasks[k : k + size] for k in range(0, len(tasks), size)]
            outcomes = await asyncio.gather(*(self._run_chunk(c, items) for c in chunks))
            for chunk, outs in zip(chunks, outcomes):
                for (m, i), out in zip(chunk, outs):
                    results[m][i] = self._settle(m, out)
        return {m: [r for r in rs if r is not None] for m, rs in results.items()}

    def _settle(self, model: str, out: ItemOutcome) -> CheckResult:
        res = settle(model, out, self.timeout_s)
        met = self.metrics
        if met is not None:
            err = out[1]
            met.check_seconds.labels(model).observe(out[2])
            if err == "timeout":
                met.check_timeouts.labels(model).inc()
            elif err is not None:
                met.check_failures.labels(model, err.split(":", 1)[0]).inc()
            elif res.warning is not None:
                met.check_failures.labels(model, "out_of_range").inc()
        if res.warning is not None:
            log.warning("%s", res.warning)
        return res

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # queues belong to one event loop
            self._loop = loop
            self._free = asyncio.Queue()
            for s in range(self._slots_total):
                self._free.put_nowait(s)
            self._inflight = asyncio.Semaphore(INFLIGHT_PER_WORKER * self.workers)

    async def _run_chunk(self, chunk: list[tuple[str, int]], items: Sequence[CheckItem]) -> list[ItemOutcome]:
        """Outcomes of one chunk, in order; re-runs what a killed or dead worker left undone."""
        done: dict[int, ItemOutcome] = {}
        todo = list(range(len(chunk)))
        while todo:
            payload = [(chunk[k][0], items[chunk[k][1]].response, items[chunk[k][1]].label) for k in todo]
            status = await self._submit(payload)
            if isinstance(status, list):
                done.update(zip(todo, status))
                break
            reason, pos, elapsed = status
            if 0 <= pos < len(todo):
                done[todo[pos]] = (math.nan, reason, elapsed)
                todo = todo[:pos] + todo[pos + 1 :]
            elif len(todo) == 1:
                done[todo[0]] = (math.nan, reason, elapsed)
                todo = []
            else:  # the worker died between items: find the culprit one item at a time
                singles = await asyncio.gather(*(self._run_chunk([chunk[k]], items) for k in todo))
                done.update((k, s[0]) for k, s in zip(todo, singles))
                todo = []
        return [done[k] for k in range(len(chunk))]

    async def _submit(self, payload: list[tuple[str, str, Any]]) -> list[ItemOutcome] | tuple[str, int, float]:
        """Run one task: its outcomes, or (reason, position of the item to blame or -1, seconds)."""
        assert self._free is not None and self._inflight is not None
        async with self._inflight:
            slot = await self._free.get()
            pool = self._pool
            if pool is None:
                self._free.put_nowait(slot)
                raise NotReady("the verifier engine was stopped")
            self._progress[2 * slot] = -1
            # a backstop only: the slot watch below ends a stuck item long before this
            backstop = len(payload) * (self.timeout_s + self.grace_s) + 30.0
            future: concurrent.futures.Future[list[ItemOutcome]] = pool.schedule(
                run_chunk, args=(slot, payload, self.timeout_s), timeout=backstop
            )
            try:
                return await self._watch(future, slot, pool)
            finally:
                self._release(slot, future)

    def _release(self, slot: int, future: concurrent.futures.Future[list[ItemOutcome]]) -> None:
        """The slot goes back once its task can no longer write to it."""
        assert self._free is not None
        free, loop = self._free, self._loop
        if future.done():
            free.put_nowait(slot)
        else:  # cancelled while queued or running (the caller went away): wait for the end
            future.cancel()
            assert loop is not None
            future.add_done_callback(lambda _: loop.call_soon_threadsafe(free.put_nowait, slot))

    def _position(self, slot: int) -> tuple[int, float]:
        """(position of the item the slot's worker is on, or -1; its start on the monotonic clock)."""
        p = self._progress
        for _ in range(3):
            pos, started, again = p[2 * slot], p[2 * slot + 1], p[2 * slot]
            if pos == again:
                return int(pos), started
        return -1, 0.0

    async def _watch(
        self, future: concurrent.futures.Future[list[ItemOutcome]], slot: int, pool: ProcessPool
    ) -> list[ItemOutcome] | tuple[str, int, float]:
        waiter = asyncio.wrap_future(future)
        limit = self.timeout_s + self.grace_s
        poll = min(0.05, limit / 4)
        while True:
            finished, _ = await asyncio.wait({waiter}, timeout=poll)
            if finished:
                break
            pos, started = self._position(slot)
            if self._pool is not pool:  # stopped: pebble may leave the future pending
                future.cancel()
                return "error: the verifier pool stopped", pos, 0.0
            if pos >= 0 and time.monotonic() - started > limit:
                future.cancel()  # pebble terminates the worker and starts a new one
                return "timeout", pos, time.monotonic() - started
        pos, started = self._position(slot)
        elapsed = time.monotonic() - started if pos >= 0 else 0.0
        if waiter.cancelled():  # the pool was stopped under it
            return "error: the verifier pool stopped", pos, elapsed
        try:
            result: list[ItemOutcome] = waiter.result()
            return result
        except concurrent.futures.TimeoutError:
            return "timeout", pos, elapsed
        except ProcessExpired as e:
            return f"crashed: the worker process exited with code {e.exitcode}", pos, elapsed
        except concurrent.futures.CancelledError:
            return "timeout", pos, elapsed
        except Exception as e:  # the task itself failed (an outcome that does not pickle, …)
            return f"error: {type(e).__name__}: {e}"[:500], pos, elapsed
