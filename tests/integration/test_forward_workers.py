"""The batcher's forward workers on a real tiny backbone (real from_pretrained): how many forwards
run at once, with how many torch threads each, and that results do not depend on either."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import torch

from rewardserve.backends import build_backend
from rewardserve.batcher import Batcher
from rewardserve.config import BatchingConfig, Settings
from rewardserve.errors import ModelFailed
from rewardserve.registry.model import BackendForward


class Recording:
    """The real backend, with each forward's start, end, thread and torch thread count recorded
    (and a short sleep inside, so overlapping forwards are observable on a fast tiny model)."""

    shares_prefix = False
    cost_model = None  # no memory model: a batch costs items × width

    def __init__(self, backend, hold: float = 0.05):
        self.inner, self.hold = backend, hold
        self.name, self.device, self.model_names = backend.name, backend.device, backend.model_names
        self.calls: list[dict] = []
        self._lock = threading.Lock()

    def encode(self, prompt, response):
        return self.inner.encode(prompt, response)

    def batch_width(self, batch):
        return self.inner.batch_width(batch)

    def forward(self, batch):
        t0 = time.perf_counter()
        threads = torch.get_num_threads()
        out = self.inner.forward(batch)
        time.sleep(self.hold)
        with self._lock:
            self.calls.append(
                {
                    "start": t0,
                    "end": time.perf_counter(),
                    "threads": threads,
                    "items": len(batch),
                    "thread": threading.get_ident(),
                }
            )
        return out


def max_overlap(calls: list[dict]) -> int:
    events = sorted([(c["start"], 1) for c in calls] + [(c["end"], -1) for c in calls], key=lambda e: (e[0], e[1]))
    now = best = 0
    for _, d in events:
        now += d
        best = max(best, now)
    return best


@pytest.fixture(scope="module")
def backend(tiny):
    settings = Settings(
        backbones={
            "bb": {
                "kind": "encoder_head",
                "path": str(tiny["encoder"]),
                "max_length": 64,
                "models": {"a": {"head": str(tiny["head_a"])}},
            }
        }
    )
    return build_backend("bb", settings.backbones["bb"], settings)


def _items(backend, n: int):
    return [backend.encode(f"question {i} " + "why " * (i % 5), "answer " * (1 + i % 9)) for i in range(n)]


async def _score(batcher: Batcher, encs, concurrent: bool) -> list[np.ndarray]:
    if concurrent:
        futures = batcher.submit(encs)
        return [x.row for x in await asyncio.gather(*futures)]
    out = []
    for e in encs:  # one at a time: each forward starts alone
        out.append((await batcher.submit([e])[0]).row)
    return out


def _run(backend, encs, concurrent: bool, **kw) -> tuple[list[np.ndarray], Recording]:
    rec = Recording(backend)

    async def main():
        b = Batcher("bb", BackendForward(rec), max_batch_tokens=4096, max_padding_ratio=0.0, **kw)
        b.start()
        try:
            return await _score(b, encs, concurrent)
        finally:
            await b.stop()

    return asyncio.run(main()), rec


def test_two_workers_run_side_by_side_with_one_thread_each_and_a_lone_forward_gets_all(backend):
    encs = _items(backend, 24)
    reference = backend.forward(encs)
    rows, rec = _run(backend, encs, concurrent=True, forward_workers=2, cpu_threads=2)
    np.testing.assert_allclose(np.stack(rows), reference, atol=1e-5)
    assert max_overlap(rec.calls) == 2  # never more forwards at once than workers
    shared = [c for c in rec.calls if c["threads"] == 1]
    assert len(shared) >= len(rec.calls) - 1  # all but possibly the last (which may start alone) share
    assert len({c["thread"] for c in rec.calls}) == 2

    rows, rec = _run(backend, encs[:5], concurrent=False, forward_workers=2, cpu_threads=2)
    np.testing.assert_allclose(np.stack(rows), reference[:5], atol=1e-5)
    assert [c["threads"] for c in rec.calls] == [2] * 5  # alone: every thread
    assert max_overlap(rec.calls) == 1


def test_one_worker_never_overlaps_and_none_leaves_torch_threads_alone(backend):
    encs = _items(backend, 16)
    before = torch.get_num_threads()
    rows, rec = _run(backend, encs, concurrent=True, forward_workers=1, cpu_threads=None)
    np.testing.assert_allclose(np.stack(rows), backend.forward(encs), atol=1e-5)
    assert max_overlap(rec.calls) == 1 and len(rec.calls) > 1
    assert torch.get_num_threads() == before


def test_stop_waits_for_every_running_forward(backend):
    encs = _items(backend, 6)
    rec = Recording(backend, hold=0.3)

    async def main():
        b = Batcher(
            "bb", BackendForward(rec), max_batch_tokens=4096, max_padding_ratio=0.0, forward_workers=3, cpu_threads=3
        )
        b.start()
        futures = b.submit(encs)
        await asyncio.sleep(0.05)
        await b.stop(drain_timeout=10)
        return [f.result().row for f in futures]

    rows = asyncio.run(main())
    assert len(rows) == 6 and len(rec.calls) >= 2
    assert max_overlap(rec.calls) <= 3


def test_forward_workers_validation_and_defaults_per_device():
    with pytest.raises(ValueError):
        Batcher("bb", None, 1024, forward_workers=0)  # type: ignore[arg-type]  # refused before the model is used
    b = BatchingConfig()
    assert b.workers_for("cpu", 2) == 2 and b.workers_for("cpu", 8) == 8
    assert b.workers_for("cuda:0", 16) == 1
    assert BatchingConfig(forward_workers=3).workers_for("cuda:0", 16) == 3
    with pytest.raises(ValueError):
        BatchingConfig(forward_workers=0)


def test_a_lone_request_of_several_items_is_split_across_the_free_workers(backend):
    encs = [backend.encode(f"question {i}", "the same answer length") for i in range(8)]
    assert len({e.length for e in encs}) <= 2
    rows, rec = _run(backend, encs, concurrent=True, forward_workers=2, cpu_threads=2)
    np.testing.assert_allclose(np.stack(rows), backend.forward(encs), atol=1e-5)
    assert max(c["items"] for c in rec.calls) <= 4  # never one forward with everything
    assert all(c["threads"] == 1 for c in rec.calls)
    assert max_overlap(rec.calls) == 2


def test_a_batcher_whose_loop_fails_fails_its_items_instead_of_leaving_them_waiting(backend):
    """An error in the batcher's own loop (here: the model's cost function) reaches every queued item
    as ModelFailed, and later submits are refused at once: nothing waits forever."""

    class BrokenCost(BackendForward):
        def plain_cost(self, n: int, width: int) -> int:
            raise ValueError("no cost")

    async def main():
        b = Batcher("bb", BrokenCost(backend), max_batch_tokens=4096, models=["a"])
        b.start()
        try:
            futures = b.submit(_items(backend, 3))
            results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 10)
            with pytest.raises(ModelFailed, match="stopped"):
                b.submit(_items(backend, 1))
            return results
        finally:
            await b.stop()

    results = asyncio.run(main())
    assert all(isinstance(r, ModelFailed) and "no cost" in str(r) for r in results)
