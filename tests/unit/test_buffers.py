"""Batch-array reuse (cache_service/sdk/buffers.py) and how many batches a stream holds (stream.py)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from cache_service.sdk.buffers import BatchBuffers, buffers_needed
from cache_service.sdk.stream import BatchPlan, HostCutter
from tests.unit.test_stream import AUG, SAMPLER, assert_same_batches, stream


def test_an_array_is_reused_once_its_tensor_is_dropped() -> None:
    pool = BatchBuffers(2)
    first = pool.take((2, 3), np.float32)
    address = first.ctypes.data
    tensor = torch.from_numpy(first)
    del first
    assert pool.take((2, 3), np.float32).ctypes.data != address  # the tensor still holds it
    del tensor
    assert pool.take((2, 3), np.float32).ctypes.data == address
    assert pool.allocated == 2


@pytest.mark.parametrize("keep", ["view", "numpy"])
def test_an_array_something_still_refers_to_is_never_overwritten(keep: str) -> None:
    pool = BatchBuffers(4)
    array = pool.take((4, 5), np.float32)
    array[:] = 7.0
    tensor = torch.from_numpy(array)
    held = tensor[1] if keep == "view" else tensor.numpy()[2:]
    del array, tensor
    for _ in range(3):
        pool.take((4, 5), np.float32)[:] = -1.0
    assert float(held.min()) == 7.0 and float(held.max()) == 7.0


def test_other_shapes_and_dtypes_get_their_own_arrays() -> None:
    pool = BatchBuffers(4)
    a = pool.take((2, 3), np.float32)
    a_address = a.ctypes.data
    del a
    assert pool.take((1, 3), np.float32).shape == (1, 3)
    assert pool.take((2, 3), np.uint8).dtype == np.uint8
    assert pool.take((2, 3), np.float32).ctypes.data == a_address


def test_capacity_bounds_what_is_kept_not_what_is_handed_out() -> None:
    pool = BatchBuffers(1)
    held = [pool.take((3,), np.int32) for _ in range(3)]  # all held: three distinct arrays
    assert len({h.ctypes.data for h in held}) == 3 and pool.allocated == 3
    kept = held[0].ctypes.data
    del held
    assert pool.take((3,), np.int32).ctypes.data == kept  # only the first was kept for reuse
    assert BatchBuffers(0).take((3,), np.int32).shape == (3,)


def test_buffers_needed_counts_the_batches_ahead_and_in_the_consumers_hands() -> None:
    assert buffers_needed(2) == 4
    assert buffers_needed(3, held_by_consumer=1) == 4
    with pytest.raises(ValueError, match="made_ahead"):
        buffers_needed(0)


def test_a_stream_whose_consumer_drops_batches_allocates_a_fixed_few() -> None:
    """Iterating without keeping batches reuses arrays; the batches equal those of a stream that keeps them all."""
    sums = []
    with stream(steps=60, copy_threads=2, batch_size=2) as s:
        for batch in s:
            sums.append((batch["image"].sum().item(), batch["label"].sum().item(), batch["positive"].tolist()))
        allocated = s.buffers.allocated
    assert allocated <= 2 * buffers_needed(s.made_ahead)
    with stream(steps=60, copy_threads=2, batch_size=2) as kept:
        batches = list(kept)  # every batch held: nothing reused
    assert kept.buffers.allocated == 2 * 60
    assert sums == [(b["image"].sum().item(), b["label"].sum().item(), b["positive"].tolist()) for b in batches]


def test_reused_arrays_give_the_same_batches_as_fresh_ones() -> None:
    with stream(steps=25, batch_size=3) as reused:
        got = [{k: v.clone() for k, v in b.items()} for b in reused]  # clones: the originals are recycled
    with stream(steps=25, batch_size=3) as fresh:
        assert_same_batches(got, list(fresh))


@pytest.mark.parametrize("threads, prefetch", [(1, 2), (2, 2), (3, 1), (1, 1)])
def test_at_most_max_prefetch_copy_threads_batches_are_made_ahead(threads: int, prefetch: int) -> None:
    host = HostCutter(SAMPLER.patch_size, AUG)
    cut = []
    lock = threading.Lock()

    def counting(plan: BatchPlan) -> dict:
        with lock:
            cut.append(1)
        return host(plan)

    with stream(steps=100, copy_threads=threads, prefetch=prefetch, cutter=counting) as s:
        time.sleep(0.3)  # nothing consumed: the producer must stop after its slots
        assert len(cut) == max(threads, prefetch) == s.made_ahead
        next(s)
        time.sleep(0.2)
        assert len(cut) == s.made_ahead + 1
