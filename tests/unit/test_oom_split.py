"""An out-of-memory forward splits its batch and retries the halves, down to one item, then fails
that item alone: the pure function (oom.py) and through the batcher, with a backend that raises
``torch.OutOfMemoryError`` above a size."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from rewardserve.backends.base import Backend, Encoded, ModelInfo
from rewardserve.batcher import Batcher
from rewardserve.errors import ModelFailed
from rewardserve.oom import forward_splitting_on_oom
from rewardserve.registry.model import BackendForward


class OomBackend(Backend):
    """Reward = the item's length; a forward holding more than ``limit`` tokens, or containing an
    item longer than ``item_limit``, raises torch.OutOfMemoryError (as a CUDA forward would)."""

    def __init__(self, limit: int, item_limit: int = 10**9):
        self.name, self.device, self.dtype, self.max_length = "oom", torch.device("cpu"), torch.float32, 10**6
        self.limit, self.item_limit = limit, item_limit
        self.calls: list[int] = []

    @property
    def model_names(self) -> list[str]:
        return ["m"]

    def model_info(self) -> dict[str, ModelInfo]:
        return {"m": ModelInfo("m", "test", "-", "-")}

    def encode(self, prompt, response: str) -> Encoded:
        return Encoded(input_ids=[1] * len(response.split()))

    def forward(self, batch: list[Encoded]) -> np.ndarray:
        self.calls.append(len(batch))
        if self.batch_cost(batch) > self.limit or max(e.length for e in batch) > self.item_limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return np.array([[float(e.length)] for e in batch])


def _encs(lengths: list[int]) -> list[Encoded]:
    return [Encoded(input_ids=[1] * n) for n in lengths]


def test_a_batch_that_fits_runs_once():
    b = OomBackend(limit=1000)
    rows, failed = forward_splitting_on_oom(b.forward, _encs([5, 6, 7]))
    assert failed == {} and b.calls == [3] and rows[:, 0].tolist() == [5, 6, 7]


def test_out_of_memory_splits_in_halves_until_it_fits():
    b = OomBackend(limit=40)  # 8 items of 10: 80 padded tokens; 4 of them: 40
    rows, failed = forward_splitting_on_oom(b.forward, _encs([10] * 8))
    assert failed == {} and rows[:, 0].tolist() == [10.0] * 8
    assert b.calls == [8, 4, 4]
    b = OomBackend(limit=25)
    lengths = [3, 12, 5, 11, 2, 9, 12, 4]
    rows, failed = forward_splitting_on_oom(b.forward, _encs(lengths))
    assert failed == {} and rows[:, 0].tolist() == lengths  # request order kept
    assert b.calls[0] == 8 and max(b.calls[1:]) <= 4


def test_an_item_too_large_alone_fails_alone():
    b = OomBackend(limit=10**6, item_limit=50)
    lengths = [10, 60, 20, 30]
    rows, failed = forward_splitting_on_oom(b.forward, _encs(lengths))
    assert list(failed) == [1] and isinstance(failed[1], torch.OutOfMemoryError)
    assert np.isnan(rows[1, 0]) and rows[[0, 2, 3], 0].tolist() == [10, 20, 30]


def test_a_lone_item_or_all_items_failing_raise():
    b = OomBackend(limit=10**6, item_limit=5)
    with pytest.raises(torch.OutOfMemoryError):
        forward_splitting_on_oom(b.forward, _encs([10]))
    assert b.calls == [1]  # nothing to split
    with pytest.raises(torch.OutOfMemoryError):
        forward_splitting_on_oom(b.forward, _encs([10, 20, 30]))


def test_other_errors_are_not_split():
    calls = []

    def broken(batch):
        calls.append(len(batch))
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(RuntimeError, match="illegal"):
        forward_splitting_on_oom(broken, _encs([1, 2, 3, 4]))
    assert calls == [4]


def test_batcher_gives_rewards_to_the_items_that_fit_and_an_error_to_the_one_that_does_not():
    backend = OomBackend(limit=60, item_limit=40)

    async def run():
        batcher = Batcher("b", BackendForward(backend), max_batch_tokens=10_000, max_wait_ms=50, max_padding_ratio=1.0)
        batcher.start()
        try:
            encs = _encs([10, 12, 50, 8, 9, 11])  # 6 × 50 = 300 > 60: splits; the 50-token item fails alone
            futures = batcher.submit(encs)
            return await asyncio.gather(*futures, return_exceptions=True)
        finally:
            await batcher.stop()

    results = asyncio.run(run())
    assert isinstance(results[2], ModelFailed) and "OutOfMemoryError" in str(results[2])
    assert [r.row[0] for i, r in enumerate(results) if i != 2] == [10, 12, 8, 9, 11]
    assert backend.calls[0] == 6 and len(backend.calls) > 1


def test_retry_after_comes_from_the_measured_tokens_per_second():
    class Slow(OomBackend):
        def forward(self, batch):
            import time

            time.sleep(0.01 * sum(e.length for e in batch) / 10)  # ~1000 tokens/s
            return super().forward(batch)

    backend = Slow(limit=10**9)

    async def run():
        batcher = Batcher("b", BackendForward(backend), max_batch_tokens=1_000, max_wait_ms=0, max_queued_tokens=1_000)
        assert batcher._retry_after() == 1.0  # nothing measured, nothing queued: the floor
        batcher.start()
        try:
            await asyncio.gather(*batcher.submit(_encs([20, 20, 20])))
            rate = batcher._tokens_per_s
            batcher._queued_tokens = 30_000  # as if the queue held 30k tokens
            return rate, batcher._retry_after()
        finally:
            batcher._queued_tokens = 0
            await batcher.stop()

    rate, retry_after = asyncio.run(run())
    assert 200 < rate < 2000  # ~1000 tokens/s, on a loaded machine
    assert retry_after == min(60.0, max(1.0, round(30_000 / rate, 1)))
    assert retry_after > 10  # the old rule (50 ms per batch of 1000 tokens) said 1.5 s whatever the model
