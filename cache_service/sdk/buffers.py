"""Batch arrays reused by the host cutter, so a consumer holds a fixed few batches rather than allocator slack.

Why: a batch of 2 x 96^3 float32 crops is about 8 MiB. Allocated afresh for every batch by the
planner and copy threads, the freed buffers stay in glibc's per-thread arenas: a consumer whose
stream had closed still held about 26 MiB of freed batches (docs/benchmarks.md, "Memory with K
consumers"), once per consumer process, and every fresh mapping was page-faulted again.

A batch leaves the stream as torch tensors over these arrays (``torch.from_numpy`` keeps a
reference to the array for as long as any tensor or view of it lives), so once the consumer has
dropped the batch only the pool refers to the array, and it is cut into again. An array that
anything else still refers to is never written: the pool allocates a new one instead (keeping at
most ``capacity`` for reuse), so a consumer that keeps batches gets correct ones, only not reused.
"""

from __future__ import annotations

import sys
import threading
from typing import Sequence

import numpy as np

__all__ = ["BatchBuffers", "buffers_needed"]


def buffers_needed(made_ahead: int, held_by_consumer: int = 2) -> int:
    """Arrays a stream needs of each kind: the batches made ahead plus those the consumer holds.

    A consumer in ``for batch in stream`` holds two at the moment it asks for the next one (the
    previous batch is still bound to the loop variable until the new one is returned).
    """
    if made_ahead < 1 or held_by_consumer < 0:
        raise ValueError(f"made_ahead ({made_ahead}) must be >= 1 and held_by_consumer ({held_by_consumer}) >= 0")
    return made_ahead + held_by_consumer


class BatchBuffers:
    """A thread-safe set of at most ``capacity`` reusable arrays, handed out when nothing else refers to them."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity ({capacity}) must be >= 0")
        self.capacity = capacity
        self._arrays: list[np.ndarray] = []
        self._lock = threading.Lock()
        self.allocated = 0  # arrays made (reused ones are not counted again): what a test or a profile reads
        self._idle_refs = self._refs_when_idle()

    def _refs_when_idle(self) -> int:
        """The reference count an array has when only the pool holds it, measured the way :meth:`take` looks.

        Measured rather than assumed, because what ``sys.getrefcount`` reports for a list element
        bound to a loop variable differs between interpreter versions.
        """
        probe = [np.empty(1)]
        for array in probe:
            return sys.getrefcount(array)
        raise AssertionError("unreachable")

    def take(self, shape: Sequence[int], dtype: np.dtype | type) -> np.ndarray:
        """An array of ``shape`` and ``dtype`` with unspecified contents (as ``np.empty``): the caller writes all of it."""
        shape, dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        with self._lock:
            for array in self._arrays:
                if array.shape == shape and array.dtype == dtype and sys.getrefcount(array) <= self._idle_refs:
                    return array
            array = np.empty(shape, dtype)
            self.allocated += 1
            if len(self._arrays) < self.capacity:
                self._arrays.append(array)
            return array

    def clear(self) -> None:
        """Forget every array (those a consumer still holds stay valid; the rest are freed)."""
        with self._lock:
            self._arrays.clear()
