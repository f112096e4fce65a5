"""The consumer side of the data path: cached volumes in, augmented crop batches out.

A trainer worker gets an epoch snapshot of pool refs, takes its shard, and a single
background thread turns volumes into batches while the GPU trains on the previous ones.
Ray stays out of this module: ``fetch`` is ``ray.get`` in production (zero-copy,
read-only shared memory) and the identity in tests. One producer thread drawing from
one seeded generator keeps the batch order deterministic.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

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
class _Crop:
    """One planned crop: the volume it comes from, its centre, and whether it is positive."""

    volume: PreparedVolume
    centre: np.ndarray
    positive: bool


class CropBatchStream:
    """Iterable of crop batches for one worker and one epoch, produced by a background thread.

    Crops of a window of volumes are shuffled together so a batch mixes volumes; the
    window holds enough volumes for two batches. With ``steps`` the shard is cycled until
    that many batches are delivered (every rank then steps the same number of times);
    without, one pass is made and the last batch may be short.
    """

    def __init__(self, refs: Sequence[Any], fetch: Callable[[Any], PreparedVolume], ratio: float,
                 sampler: SamplerConfig, augment: AugmentConfig, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, epoch: int = 0, prefetch: int = 2,
                 steps: int | None = None, rng: np.random.Generator | None = None) -> None:
        if batch_size < 1 or prefetch < 1:
            raise ValueError(f"batch_size ({batch_size}) and prefetch ({prefetch}) must be >= 1")
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
        self.wait_seconds = 0.0
        self.crops_delivered = 0
        self.batches_delivered = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._produce, name="crop-batch-producer", daemon=True)
        self._thread.start()

    # ----- producer side (background thread) -------------------------------------------

    def _windows(self) -> Iterator[list[int]]:
        """Shard positions in windows: one pass, or cycling the shard when ``steps`` was given."""
        while True:
            for start in range(0, len(self.order), self.window):
                yield self.order[start:start + self.window]
            if not self.cycle:
                return

    def _plan(self, positions: list[int]) -> list[_Crop]:
        """Centres for every crop of a window, shuffled across its volumes."""
        plan: list[_Crop] = []
        for position in positions:
            volume = self.fetch(self.refs[position])
            centres, positive = choose_centres(volume, self.sampler.samples_per_volume, self.ratio, self.rng)
            plan.extend(_Crop(volume, c, bool(p)) for c, p in zip(centres, positive))
        return [plan[i] for i in self.rng.permutation(len(plan))]

    def _make_batch(self, crops: list[_Crop]) -> Batch:
        """Copy planned crops straight into one batch array, augment it in place, wrap as tensors."""
        patch = tuple(int(p) for p in self.sampler.patch_size)
        first = crops[0].volume
        images = np.empty((len(crops), first.image.shape[0], *patch), dtype=np.float32)
        labels = np.empty((len(crops), first.label.shape[0], *patch), dtype=np.uint8)
        flips = draw_flips(len(crops), self.augment, self.rng)  # flipped while copying: no extra pass
        for i, c in enumerate(crops):
            crop_into(images[i], labels[i], c.volume.image, c.volume.label, c.centre, patch, flip=flips[i])
        augment_batch(images, labels, without_flip(self.augment), self.rng, inplace=True)
        positive = torch.tensor([c.positive for c in crops], dtype=torch.bool)
        return {"image": torch.from_numpy(images), "label": torch.from_numpy(labels), "positive": positive}

    def _batches(self) -> Iterator[Batch]:
        """Yield at most ``self.steps`` batches; crops left over from a window join the next one."""
        made, pending = 0, []
        for positions in self._windows():
            pending.extend(self._plan(positions))
            while len(pending) >= self.batch_size:
                yield self._make_batch(pending[:self.batch_size])
                pending, made = pending[self.batch_size:], made + 1
                if made == self.steps:
                    return
        if pending:  # end of a single pass: the short last batch
            yield self._make_batch(pending)

    def _put(self, item: Any) -> bool:
        """Put unless stopped; polling keeps close() from hanging on a full queue."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_PUT_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for batch in self._batches():
                if not self._put(batch):
                    return
            self._put(_END)
        except BaseException as err:  # noqa: BLE001 -- handed to the consumer, which re-raises
            self._put(_Failure(err))

    # ----- consumer side ---------------------------------------------------------------

    def __iter__(self) -> "CropBatchStream":
        return self

    def __next__(self) -> Batch:
        if self._done:
            raise StopIteration
        start = time.perf_counter()
        item = self._queue.get()
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
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout)

    def __enter__(self) -> "CropBatchStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
