"""The data path without a cache: what a user without this service runs (the baseline arm).

A map-style torch ``Dataset`` over the training records: each item loads and
preprocesses one volume with the same deterministic chain the cache runs, then cuts
``samples_per_volume`` crops at a fixed pos/neg ratio and augments them. A ``DataLoader``
with worker processes does this in parallel, every epoch, as a plain PyTorch/MONAI loop
would. Crops are regrouped into batches of ``batch_size`` so a training step sees the
same batch shape as on the cached path, and the time spent blocked on the loader is
counted as data wait.
"""

from __future__ import annotations

import math
import time
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cache_service.sdk.stream import Batch, shard
from common.augment import augment_batch
from common.catalog import Record
from common.config import AugmentConfig, SamplerConfig
from common.preprocess import Preprocessor
from common.sampling import sample_crops

__all__ = ["PreprocessCropDataset", "PreprocessingBatchStream"]


class PreprocessCropDataset(Dataset):
    """Item ``i``: record ``i`` loaded, preprocessed, cropped and augmented (seeded by seed, epoch, rank, i)."""

    def __init__(self, records: Sequence[Record], preprocessor: Preprocessor, ratio: float, sampler: SamplerConfig,
                 augment: AugmentConfig, seed: int, epoch: int, rank: int) -> None:
        self.records, self.preprocessor, self.ratio = list(records), preprocessor, float(ratio)
        self.sampler, self.augment = sampler, augment
        self.seed, self.epoch, self.rank = seed, epoch, rank

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        volume = self.preprocessor(self.records[i])
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, i])
        images, labels, positive = sample_crops(volume, self.sampler.samples_per_volume, self.ratio,
                                                self.sampler.patch_size, rng)
        augment_batch(images, labels, self.augment, rng, inplace=True)
        return images, labels, positive


class PreprocessingBatchStream:
    """Crop batches for one worker and one epoch from a process ``DataLoader``; a context manager.

    Like :class:`cache_service.sdk.stream.CropBatchStream`: the shard is this rank's part of the
    same global shuffle, and with ``steps`` the shard is cycled until that many batches
    are delivered.
    """

    def __init__(self, records: Sequence[Record], preprocessor: Preprocessor, ratio: float,
                 sampler: SamplerConfig, augment: AugmentConfig, batch_size: int, num_workers: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1, epoch: int = 0,
                 steps: int | None = None) -> None:
        order = shard(len(records), rank, world_size, epoch, seed)
        if not order:
            raise ValueError("no training records to load")
        per_volume = sampler.samples_per_volume
        if steps is not None:  # cycle the shard: enough volumes for `steps` full batches
            order = [int(i) for i in np.resize(order, math.ceil(steps * batch_size / per_volume))]
        self.steps = steps if steps is not None else math.ceil(len(order) * per_volume / batch_size)
        self.batch_size = batch_size
        dataset = PreprocessCropDataset(records, preprocessor, ratio, sampler, augment, seed, epoch, rank)
        self.loader = DataLoader(dataset, batch_size=None, sampler=order, num_workers=num_workers,
                                 prefetch_factor=2 if num_workers > 0 else None)
        self.wait_seconds = 0.0

    def _volumes(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        it = iter(self.loader)
        while True:
            start = time.perf_counter()
            item = next(it, None)
            self.wait_seconds += time.perf_counter() - start
            if item is None:
                return
            yield tuple(np.asarray(x) for x in item)  # type: ignore[misc]

    def __iter__(self) -> Iterator[Batch]:
        images: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        positive: list[np.ndarray] = []
        made = 0
        for img, lab, pos in self._volumes():
            images.extend(img)
            labels.extend(lab)
            positive.extend(pos)
            while len(images) >= self.batch_size and made < self.steps:
                yield _batch(images[:self.batch_size], labels[:self.batch_size], positive[:self.batch_size])
                del images[:self.batch_size], labels[:self.batch_size], positive[:self.batch_size]
                made += 1
        if images and made < self.steps:  # the short last batch of a single pass
            yield _batch(images, labels, positive)

    def __len__(self) -> int:
        return self.steps

    def __enter__(self) -> "PreprocessingBatchStream":
        return self

    def __exit__(self, *exc: object) -> None:
        """Nothing to stop: the loader's worker processes end when the epoch's iterator is dropped."""


def _batch(images: list[np.ndarray], labels: list[np.ndarray], positive: list[np.ndarray]) -> Batch:
    return {"image": torch.from_numpy(np.stack(images)), "label": torch.from_numpy(np.stack(labels)),
            "positive": torch.as_tensor(np.asarray(positive, dtype=bool))}
