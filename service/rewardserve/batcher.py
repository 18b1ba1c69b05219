"""One asynchronous batcher per backbone, shared by every concurrent request.

Items wait in a bounded queue (``max_queued_tokens``; beyond it ``submit`` raises ``Overloaded``
at once). The loop forms a batch as soon as the queue holds ``max_batch_tokens`` padded tokens
or the oldest item has waited ``max_wait_ms``. A batch always contains the oldest waiting item
(no starvation); with length sorting on, it is filled with the items closest in length to it, so
little compute goes to padding. Forwards run on the backbone's worker threads (``forward_workers``,
each at most one forward at a time), so the event loop keeps accepting requests meanwhile and the
next batch forms while forwards run. Items whose request was cancelled (client gone) are dropped
before their forward.

What the batcher needs of the model it feeds is ``ForwardModel``: ``forward`` (a batch, with a
number of CPU threads) and ``prefix_cost``, its batch-cost function. A model that shares prompt
prefixes (decoders: each group's prompt runs once, then the suffixes; ``backends/prefix.py``)
returns a counter of the tokens a forming batch computes, and the batcher keeps the items of one
prompt together where the budget allows: a batch starts with the oldest item's group, whether its
items came in one request or in many, then fills with other groups. Without one (``None``) a batch
costs its items × the longest.

CPU threads (``cpu_threads`` = the process's torch intra-op threads, T; W workers): a lone item —
no forward running, nothing else queued — is one forward with all T threads (lowest latency for
it); anything more is spread over the free workers (the queued items split evenly, up to the token
budget each), each forward with T // W threads, so W forwards run side by side without
oversubscribing the cores. On a small CPU a transformer forward gains little from a second
intra-op thread, two independent forwards nearly 2× (bench/README.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Generic, Protocol

import numpy as np

from .batch_selection import Batchable, ItemT, ItemT_contra, PrefixCost, Scored, _group, _Pending, pick_batch
from .errors import ModelFailed, Overloaded
from .health import ForwardHealth
from .metrics import Metrics
from .oom import forward_splitting_on_oom

log = logging.getLogger("rewardserve.batcher")

__all__ = ["Batchable", "Batcher", "ForwardModel", "PrefixCost", "Scored", "pick_batch"]


class ForwardModel(Protocol[ItemT_contra]):
    """What the batcher needs of the model it feeds."""

    def forward(self, batch: Sequence[ItemT_contra], threads: int | None) -> np.ndarray:
        """Raw rewards, one row per item; ``threads``: CPU intra-op threads for it (None: as set)."""

    def batch_width(self, batch: Sequence[ItemT_contra]) -> int:
        """The width the batch is padded to (for the padding metrics)."""

    def prefix_cost(self) -> PrefixCost | None:
        """A fresh counter when items of one prompt share its forward; None: a batch costs items × width."""

    def plain_cost(self, n: int, width: int) -> int:
        """What a plain forward of ``n`` items padded to ``width`` holds, in computed tokens (the
        budget's unit; ``n × width`` when the model has no memory model)."""


class Batcher(Generic[ItemT]):
    def __init__(
        self,
        name: str,
        model: ForwardModel[ItemT],
        max_batch_tokens: int,
        max_wait_ms: float = 2.0,
        max_queued_tokens: int = 262_144,
        sort_by_length: bool = True,
        max_padding_ratio: float = 1.0,
        forward_workers: int = 1,
        cpu_threads: int | None = None,
        metrics: Metrics | None = None,
        health: ForwardHealth | None = None,
        models: Sequence[str] = (),
    ):
        if forward_workers < 1:
            raise ValueError(f"forward_workers must be >= 1, got {forward_workers}")
        self.model, self.name, self.models = model, name, list(models)  # models: named in errors
        self.shares_prefix = model.prefix_cost() is not None
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000.0
        self.max_queued_tokens = max_queued_tokens
        self.sort_by_length = sort_by_length
        self.max_padding_ratio = max_padding_ratio
        self.metrics = metrics
        self._pending: list[_Pending[ItemT]] = []
        self._queued_tokens = 0
        self._wakeup = asyncio.Event()
        self.forward_workers = forward_workers
        # threads per forward: (alone, shared); None leaves torch's setting alone (e.g. on a GPU)
        self.threads = None if cpu_threads is None else (cpu_threads, max(1, cpu_threads // forward_workers))
        self._executor = ThreadPoolExecutor(forward_workers, thread_name_prefix=f"forward-{self.name}")
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self.forwards = 0  # forward passes run (for tests and diagnostics)
        self._tokens_per_s = 0.0  # measured, all workers together (moving average; Retry-After)
        self.health = health  # every forward reports to it (/readyz, /healthz)

    # -- public -----------------------------------------------------------------------------
    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    @property
    def queued_items(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")
            self._task.add_done_callback(self._loop_done)

    def _loop_done(self, task: asyncio.Task[None]) -> None:
        """A loop that died of an error fails what is queued (instead of leaving it waiting forever)."""
        error = None if task.cancelled() else task.exception()
        if error is None:
            return
        log.error("the batcher of backbone %s stopped: %r", self.name, error)
        failed = ModelFailed(self.name, self.models, error)
        for p in self._pending:
            if not p.future.done():
                p.future.set_exception(failed)
        self._pending.clear()
        self._queued_tokens = 0

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Finish what is queued (up to ``drain_timeout`` s), then stop the loop and the worker."""
        deadline = time.monotonic() + drain_timeout
        while (self._pending or self._running) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # a loop that failed was reported by _loop_done
                pass
            self._task = None
        if self._running:
            await asyncio.wait(list(self._running), timeout=max(0.0, deadline - time.monotonic()))
        for p in self._pending:
            if not p.future.done():
                p.future.set_exception(RuntimeError(f"backbone {self.name!r} is shutting down"))
        self._pending.clear()
        self._executor.shutdown(wait=True)

    def submit(self, encoded: Sequence[ItemT]) -> list[asyncio.Future[Scored]]:
        """Queue items; return one future per item, resolving to its ``Scored`` (row of raw rewards)."""
        if self._task is not None and self._task.done():
            raise ModelFailed(self.name, self.models, RuntimeError(f"the batcher of backbone {self.name!r} stopped"))
        tokens = sum(e.length for e in encoded)
        if self._queued_tokens and self._queued_tokens + tokens > self.max_queued_tokens:
            if self.metrics:
                self.metrics.rejected.labels(self.name).inc(len(encoded))
            raise Overloaded(
                f"backbone {self.name!r} is overloaded: {self._queued_tokens} tokens queued "
                f"(limit {self.max_queued_tokens}); retry later",
                self._retry_after(),
            )
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        futures = []
        for e in encoded:
            fut = loop.create_future()
            self._pending.append(_Pending(e, fut, now, _group(e) if self.shares_prefix else None))
            futures.append(fut)
        self._queued_tokens += tokens
        self._update_depth()
        self._wakeup.set()
        return futures

    # -- internals --------------------------------------------------------------------------
    def _retry_after(self) -> float:
        """Seconds until the queue has likely drained: queued tokens at the measured tokens/s (all
        workers), between 1 and 60; before the first forward, 50 ms per batch."""
        if self._tokens_per_s:
            return min(60.0, max(1.0, round(self._queued_tokens / self._tokens_per_s, 1)))
        return max(1.0, round(self._queued_tokens / max(self.max_batch_tokens, 1) * 0.05, 1))

    def _update_depth(self) -> None:
        if self.metrics:
            self.metrics.queue_depth_tokens.labels(self.name).set(self._queued_tokens)
            self.metrics.queue_depth_items.labels(self.name).set(len(self._pending))

    def _drop_cancelled(self) -> None:
        live = [p for p in self._pending if not p.future.done()]
        dropped = len(self._pending) - len(live)
        if dropped:
            self._queued_tokens -= sum(p.enc.length for p in self._pending if p.future.done())
            self._pending = live
            if self.metrics:
                self.metrics.dropped.labels(self.name).inc(dropped)
            self._update_depth()

    async def _wait_for_company(self) -> None:
        deadline = self._pending[0].arrived + self.max_wait
        while self._queued_tokens < self.max_batch_tokens:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    async def _loop(self) -> None:
        while True:
            self._drop_cancelled()
            if not self._pending or len(self._running) >= self.forward_workers:
                # nothing to do, or every worker busy: wait for new items or a finished forward
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.max_wait > 0 and not self._running:
                await self._wait_for_company()
                self._drop_cancelled()
                if not self._pending:
                    continue
            free = self.forward_workers - len(self._running)
            batch = pick_batch(
                self._pending,
                self.max_batch_tokens,
                self.sort_by_length,
                self.max_padding_ratio,
                max_items=-(-len(self._pending) // free),
                cost=self.model.prefix_cost(),
                plain_cost=self.model.plain_cost,
            )
            taken = set(map(id, batch))
            self._pending = [p for p in self._pending if id(p) not in taken]
            self._queued_tokens -= sum(p.enc.length for p in batch)
            self._update_depth()
            threads = None
            if self.threads is not None:
                threads = self.threads[0] if not self._running and not self._pending else self.threads[1]
            task = asyncio.get_running_loop().create_task(self._run(batch, threads))
            self._running.add(task)
            task.add_done_callback(self._forward_done)

    def _forward_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._wakeup.set()

    def _forward(self, encs: list[ItemT], threads: int | None) -> tuple[np.ndarray, dict[int, BaseException]]:
        """The model's forward; one that runs out of memory is retried in halves (``oom.py``)."""
        return forward_splitting_on_oom(lambda part: self.model.forward(part, threads), encs)

    async def _run(self, batch: list[_Pending[ItemT]], threads: int | None) -> None:
        encs = [p.enc for p in batch]
        t0 = time.perf_counter()
        try:
            with self.health.watch(self.name) if self.health else nullcontext():
                rows, failed = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._forward, encs, threads
                )
        except Exception as e:  # a broken forward fails its batch, not the batcher
            log.exception("forward of backbone %s failed", self.name)
            if self.metrics:
                self.metrics.forward_errors.labels(self.name).inc()
            err = ModelFailed(self.name, self.models, e)
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(err)
            return
        t1 = time.perf_counter()
        self.forwards += 1
        rate = sum(e.length for e in encs) * len(self._running) / max(t1 - t0, 1e-6)
        self._tokens_per_s = rate if not self._tokens_per_s else 0.8 * self._tokens_per_s + 0.2 * rate
        for i, (p, row) in enumerate(zip(batch, rows)):
            if p.future.done():
                continue
            if i in failed:  # out of memory on its own (oom.py)
                p.future.set_exception(ModelFailed(self.name, self.models, failed[i]))
            else:
                p.future.set_result(Scored(row, t0, t1))
        if self.metrics:
            m, n = self.metrics, len(batch)
            width = self.model.batch_width(encs)
            real = sum(e.length for e in encs)
            m.batch_items.labels(self.name).observe(n)
            m.batch_tokens.labels(self.name).observe(n * width)
            m.padding_ratio.labels(self.name).observe(1.0 - real / (n * width))
            m.forward_seconds.labels(self.name).observe(t1 - t0)
            for p in batch:
                m.queue_wait.labels(self.name).observe(t0 - p.arrived)
