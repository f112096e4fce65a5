"""The consumer side of the data path: cached volumes in, augmented crop batches out.

Every consumer (the project's Ray Train workers as much as a user's own loop) gets an epoch
snapshot of pool refs, takes its shard, and background threads turn volumes into batches
while the GPU trains on the previous ones; so this lives in the SDK, not in the trainer app.
Ray stays out of this module: ``fetch`` is ``ray.get`` in production (zero-copy, read-only shared
memory) and the identity in tests.

Determinism with several threads: one planner thread makes every random decision from
the one seeded generator, in order (volume order, crop centres, flips, and a seed for
each batch's intensity augmentation); copy threads only execute plans, and batches are
delivered in plan order. So the output depends on the seed, never on the thread count
or on timing. numpy releases the GIL while it copies, so several copy threads can use
several cores where the machine has them to spare.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from cache_service.sdk.buffers import BatchBuffers, buffers_needed
from common.augment import augment_batch, draw_flips, without_flip
from common.config import AugmentConfig, SamplerConfig
from common.sampling import choose_centres, crop_into
from common.volume import PreparedVolume

Batch = dict[str, torch.Tensor]
_PUT_POLL_S = 0.05


class BatchProducerError(RuntimeError):
    """The background producer failed; ``__cause__`` holds the original exception."""


def shard(n_items: int, rank: int, world_size: int, epoch: int, seed: int) -> list[int]:
    """This rank's item positions for one epoch.

    Every rank computes the same global shuffle from (seed, epoch), takes every
    world_size-th element from ``rank``, and the order is padded by wrap-around so every
    rank gets ceil(n / world_size) items: DDP needs the same number of steps per rank.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    if n_items <= 0:
        return []
    order = np.random.default_rng([seed, epoch]).permutation(n_items)
    padded = np.resize(order, math.ceil(n_items / world_size) * world_size)
    return [int(i) for i in padded[rank::world_size]]


@dataclass(frozen=True)
class _Failure:
    error: BaseException


_END = object()


@dataclass(frozen=True)
class PlannedCrop:
    """One planned crop: the volume it comes from, its centre, and whether it is positive."""

    volume: PreparedVolume
    centre: np.ndarray
    positive: bool


@dataclass(frozen=True)
class BatchPlan:
    """Everything random about one batch, drawn by the planner; copying it needs no generator."""

    crops: list[PlannedCrop]
    flips: np.ndarray  # (B, 3) axes to mirror while copying
    augment_seed: int | None  # seed of the batch's intensity augmentation; None: augmentation is off


BatchCutter = Callable[[BatchPlan], Batch]
"""Executes a batch plan: the host cutter below, or the device one (``cache_service.sdk.device``)."""


def _augmentation_off(cfg: AugmentConfig) -> bool:
    """True when no post-flip transform can fire, so the augmentation pass can be skipped."""
    return max(cfg.affine_prob, cfg.contrast_prob, cfg.scale_prob, cfg.shift_prob) <= 0.0


class HostCutter:
    """Cuts planned crops on the CPU straight into one batch array, augments it in place, wraps as tensors.

    The batch arrays come from ``buffers`` (:mod:`cache_service.sdk.buffers`): reused once the
    consumer has dropped the batch they went out in; without, every batch is a fresh allocation.
    """

    def __init__(self, patch: Sequence[int], augment: AugmentConfig, buffers: BatchBuffers | None = None) -> None:
        self.patch = tuple(int(p) for p in patch)
        self.augment_rest = without_flip(augment)  # flips happen while copying
        self.buffers = buffers if buffers is not None else BatchBuffers(0)

    def __call__(self, plan: BatchPlan) -> Batch:
        crops, first = plan.crops, plan.crops[0].volume
        images = self.buffers.take((len(crops), first.image.shape[0], *self.patch), np.float32)
        labels = self.buffers.take((len(crops), first.label.shape[0], *self.patch), np.uint8)
        for i, c in enumerate(crops):
            crop_into(images[i], labels[i], c.volume.image, c.volume.label, c.centre, self.patch, flip=plan.flips[i])
        if plan.augment_seed is not None:
            augment_batch(images, labels, self.augment_rest, np.random.default_rng(plan.augment_seed), inplace=True)
        positive = torch.tensor([c.positive for c in crops], dtype=torch.bool)
        return {"image": torch.from_numpy(images), "label": torch.from_numpy(labels), "positive": positive}


class CropBatchStream:
    """Iterable of crop batches for one worker and one epoch, produced by background threads.

    Crops of a window of volumes are shuffled together so a batch mixes volumes; the
    window holds enough volumes for two batches. With ``steps`` the shard is cycled until
    that many batches are delivered (every rank then steps the same number of times);
    without, one pass is made and the last batch may be short. ``copy_threads`` batches
    are cut at once (1: the planner thread cuts them itself); the batches are the same
    for any value. One is the default: on the 2-core test machine a second copy thread gave no
    gain (docs/benchmarks.md). ``keep_fetched`` fetches each volume once per stream (see ``_volume``).

    Memory: at most ``max(prefetch, copy_threads)`` batches are made ahead of the consumer (queued
    or being cut), and the host cutter reuses that many arrays plus the two the consumer holds, so
    a consumer's own memory is a fixed few batches (docs/benchmarks.md, "Memory with K consumers").
    """

    def __init__(self, refs: Sequence[Any], fetch: Callable[[Any], PreparedVolume], ratio: float,
                 sampler: SamplerConfig, augment: AugmentConfig, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, epoch: int = 0, prefetch: int = 2,
                 steps: int | None = None, rng: np.random.Generator | None = None,
                 copy_threads: int = 1, keep_fetched: bool = False, cutter: BatchCutter | None = None) -> None:
        if batch_size < 1 or prefetch < 1 or copy_threads < 1:
            raise ValueError(f"batch_size ({batch_size}), prefetch ({prefetch}) and copy_threads ({copy_threads}) "
                             "must be >= 1")
        self.refs, self.fetch, self.ratio = list(refs), fetch, float(ratio)
        self.sampler, self.augment, self.batch_size = sampler, augment, batch_size
        self.order = shard(len(self.refs), rank, world_size, epoch, seed)
        if not self.order:
            raise ValueError("no volumes to crop from: the epoch snapshot is empty")
        self.rng = rng if rng is not None else np.random.default_rng([seed, epoch, rank])
        total = len(self.order) * sampler.samples_per_volume
        self.cycle = steps is not None
        self.steps = steps if steps is not None else math.ceil(total / batch_size)
        self.window = max(1, math.ceil(2 * batch_size / sampler.samples_per_volume))
        self.patch = tuple(int(p) for p in sampler.patch_size)
        self.augment_rest = without_flip(augment)  # flips happen while copying
        self.made_ahead = max(prefetch, copy_threads)
        self.buffers = BatchBuffers(2 * buffers_needed(self.made_ahead))  # image and label arrays
        self.cut = cutter if cutter is not None else HostCutter(self.patch, augment, self.buffers)
        self.keep_fetched = keep_fetched
        self._fetched: dict[int, PreparedVolume] = {}
        self.wait_seconds = 0.0
        self.crops_delivered = 0
        self.batches_delivered = 0
        self._queue: queue.Queue[Any] = queue.Queue()  # bounded by _slots: a slot per batch made ahead
        self._slots = threading.Semaphore(self.made_ahead)
        self._stop = threading.Event()
        self._done = False
        self._pool = (ThreadPoolExecutor(copy_threads, thread_name_prefix="crop-batch-copy")
                      if copy_threads > 1 else None)
        self._thread = threading.Thread(target=self._produce, name="crop-batch-planner", daemon=True)
        self._thread.start()

    # ----- producer side (background thread) -------------------------------------------

    def _windows(self) -> Iterator[list[int]]:
        """Shard positions in windows: one pass, or cycling the shard when ``steps`` was given."""
        while True:
            for start in range(0, len(self.order), self.window):
                yield self.order[start:start + self.window]
            if not self.cycle:
                return

    def _volume(self, position: int) -> PreparedVolume:
        """The fetched volume at a snapshot position; fetched once per stream with ``keep_fetched``.

        Objects in the store are immutable and ``ray.get`` returns read-only views of shared
        memory, so keeping them costs no memory and saves a deserialisation per volume draw.
        Off by default: with a fetch that loads and preprocesses (the no-cache baseline) keeping
        would turn the stream into a private cache.
        """
        if not self.keep_fetched:
            return self.fetch(self.refs[position])
        volume = self._fetched.get(position)
        if volume is None:
            volume = self._fetched[position] = self.fetch(self.refs[position])
        return volume

    def _plan(self, positions: list[int]) -> list[PlannedCrop]:
        """Centres for every crop of a window, shuffled across its volumes."""
        plan: list[PlannedCrop] = []
        for position in positions:
            volume = self._volume(position)
            centres, positive = choose_centres(volume, self.sampler.samples_per_volume, self.ratio, self.rng)
            plan.extend(PlannedCrop(volume, c, bool(p)) for c, p in zip(centres, positive))
        return [plan[i] for i in self.rng.permutation(len(plan))]

    def _plan_batch(self, crops: list[PlannedCrop]) -> BatchPlan:
        """Draw the rest of a batch's randomness (flips, augmentation seed) in planner order."""
        flips = draw_flips(len(crops), self.augment, self.rng)
        seed = None if _augmentation_off(self.augment_rest) else int(self.rng.integers(2 ** 63))
        return BatchPlan(crops, flips, seed)

    def _plans(self) -> Iterator[BatchPlan]:
        """At most ``self.steps`` batch plans; crops left over from a window join the next one."""
        made, pending = 0, []
        for positions in self._windows():
            pending.extend(self._plan(positions))
            while len(pending) >= self.batch_size:
                yield self._plan_batch(pending[:self.batch_size])
                pending, made = pending[self.batch_size:], made + 1
                if made == self.steps:
                    return
        if pending:  # end of a single pass: the short last batch
            yield self._plan_batch(pending)

    def _slot(self) -> bool:
        """Wait for a free slot (the consumer frees one per batch it takes) unless stopped; polling keeps
        close() from hanging."""
        while not self._stop.is_set():
            if self._slots.acquire(timeout=_PUT_POLL_S):
                return True
        return False

    def _produce(self) -> None:
        """Planner loop: plans in order; copies inline (one thread) or as futures, queued in order."""
        try:
            for plan in self._plans():
                if not self._slot():
                    return
                self._queue.put(self.cut(plan) if self._pool is None else self._pool.submit(self.cut, plan))
            self._queue.put(_END)
        except BaseException as err:  # noqa: BLE001 -- handed to the consumer, which re-raises
            self._queue.put(_Failure(err))

    # ----- consumer side ---------------------------------------------------------------

    def __iter__(self) -> "CropBatchStream":
        return self

    def __next__(self) -> Batch:
        if self._done:
            raise StopIteration
        start = time.perf_counter()
        item = self._queue.get()
        self._slots.release()  # the producer may start the next batch while this one is finishing or in use
        if isinstance(item, Future):
            try:
                item = item.result()
            except BaseException as err:  # noqa: BLE001 -- re-raised below as the producer's failure
                item = _Failure(err)
        self.wait_seconds += time.perf_counter() - start
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            raise BatchProducerError(f"crop batch producer failed: {type(item.error).__name__}: "
                                     f"{item.error}") from item.error
        self.crops_delivered += int(item["image"].shape[0])
        self.batches_delivered += 1
        return item

    def __len__(self) -> int:
        return self.steps

    def close(self, timeout: float = 5.0) -> None:
        """Stop the producer and drop queued batches; safe to call twice or mid-epoch."""
        self._stop.set()
        self._done = True
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Future):
                item.cancel()
        self._thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)  # at most one batch copy per thread to finish
        self._fetched.clear()
        self.buffers.clear()

    def __enter__(self) -> "CropBatchStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
