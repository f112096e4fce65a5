"""The consumer side of an epoch: this rank's shard of a snapshot as crop batches, and a DataLoader form.

:class:`CropBatches` wraps :class:`cache_service.sdk.stream.CropBatchStream` (the background crop
producer) and adds what belongs to one consumer rather than to the shared cache:

* the patch-size check's last guard: a volume smaller than *this* experiment's patch raises a
  :class:`~common.errors.DataError` naming the file (it is not padded, and it is not
  quarantined at the cache, where it would be lost to experiments with smaller patches);
  ``connect`` and ``experiment()`` check the volumes prepared by then, this catches one
  prepared later (a replacement entering the pool);
* the user's random MONAI suffix, run on every crop after the service's pos/neg crop;
* where crops are cut: on the host (default) or, given ``device_volumes``, on the training
  device from volumes uploaded once per pool generation (``sampler.device: cuda``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import ray
import torch
from monai.transforms import Compose
from torch.utils.data import IterableDataset, get_worker_info

from cache_service.sdk.device import DeviceCutter, DeviceVolumes
from cache_service.sdk.stream import Batch, BatchProducerError, CropBatchStream, shard
from cache_service.snapshot import Snapshot
from common.config import AugmentConfig, SamplerConfig
from common.errors import ConfigError, SmartCacheError
from common.volume import PreparedVolume, require_all_fit

NO_AUGMENT = AugmentConfig(flip_prob=0.0, shift_prob=0.0)


@dataclass(frozen=True)
class ConsumerSettings:
    """How one experiment turns volumes into batches; everything here is per experiment, never at the cache."""

    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # the service's own flip / intensity shift
    batch_size: int = 2
    patch_parameter: str = "sampler.patch_size"  # the setting the patch size came from, named in errors
    batch_counts_volumes: bool = False  # True: batch_size counts volumes, each giving samples_per_volume crops (MONAI)
    seed: int = 0
    steps: int | None = None  # batches per rank and epoch; None: one pass over the shard
    suffix: Compose | None = None  # the user's random MONAI transforms, run on each crop

    def with_overrides(self, **kw: Any) -> "ConsumerSettings":
        """A copy with the given (non-None) values; ``patch_size`` and ``samples_per_volume`` go to the sampler."""
        sampler_kw = {k: kw.pop(k) for k in ("patch_size", "samples_per_volume") if kw.get(k) is not None}
        sampler = self.sampler.replace(**{k: tuple(v) if k == "patch_size" else v for k, v in sampler_kw.items()})
        if "patch_size" in sampler_kw:
            kw.setdefault("patch_parameter", "patch_size=")
        return replace(self, sampler=sampler, **{k: v for k, v in kw.items() if v is not None})

    @property
    def crops_per_batch(self) -> int:
        """Crops in one batch: ``batch_size`` itself, or MONAI's count of ``batch_size`` volumes × ``num_samples``.

        A MONAI ``DataLoader(batch_size=2)`` over a dataset whose ``RandCropByPosNegLabeld`` has
        ``num_samples=4`` trains on 8 crops a step; a chain with that crop gets the same here.
        """
        return self.batch_size * (self.sampler.samples_per_volume if self.batch_counts_volumes else 1)


def _tensor(x: Any) -> torch.Tensor:
    """A plain tensor from a MONAI transform's output (a MetaTensor or numpy array)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def apply_suffix(batch: Batch, suffix: Compose) -> Batch:
    """Run the user's random dictionary transforms on every crop of a batch, one crop at a time."""
    images, labels = [], []
    for image, label in zip(batch["image"], batch["label"]):
        out = suffix({"image": image, "label": label})
        if isinstance(out, list):
            raise ConfigError("transforms", type(out).__name__, "the suffix returned several samples per crop; "
                              "only the RandCropByPosNegLabeld (done by the service) may make several")
        images.append(_tensor(out["image"]).to(torch.float32))
        labels.append(_tensor(out["label"]).to(label.dtype))
    return {**batch, "image": torch.stack(images), "label": torch.stack(labels)}


class CropBatches:
    """Iterator over one rank's crop batches for one epoch; use as a context manager (stops the producer)."""

    def __init__(self, snapshot: Snapshot, settings: ConsumerSettings, *, epoch: int, rank: int, world_size: int,
                 items: Sequence[Any] | None = None, fetch: Callable[[Any], PreparedVolume] | None = None,
                 device_volumes: DeviceVolumes | None = None) -> None:
        self.snapshot, self.settings, self.epoch = snapshot, settings, epoch
        load = fetch or ray.get
        patch = settings.sampler.patch_size

        def checked(ref: Any) -> PreparedVolume:
            volume = load(ref)
            volume.require_fits(patch, settings.patch_parameter)
            return volume

        if items is None:  # store volumes are zero-copy views: check this rank's share now, naming every small one
            mine = shard(len(snapshot.refs), rank, world_size, epoch, settings.seed)
            require_all_fit([load(snapshot.refs[i]) for i in sorted(set(mine))], patch, settings.patch_parameter)

        # a chain with nothing after its crop has an empty suffix: passing every crop through it cost a
        # Compose call per crop and a copy of every batch (torch.stack) for the same values
        self.suffix = settings.suffix if settings.suffix is not None and settings.suffix.transforms else None
        if self.suffix is not None:  # reproducible per (seed, epoch, rank), like the crops
            self.suffix.set_random_state(seed=int(np.random.default_rng([settings.seed, epoch, rank, 1])
                                                  .integers(2**31)))
        augment = settings.augment if settings.suffix is None else NO_AUGMENT  # a user's chain augments itself
        cutter = None
        if device_volumes is not None:
            device_volumes.keep_only(snapshot.item_ids)  # volumes that left the pool free their device memory
            cutter = DeviceCutter(device_volumes, patch, augment)
        # volumes from the object store are immutable zero-copy views: fetch each once per epoch;
        # a loader (the no-cache baseline) must not be memoised, or the stream becomes a private cache
        self.stream = CropBatchStream(list(snapshot.refs) if items is None else list(items), checked, snapshot.ratio,
                                      settings.sampler, augment, settings.crops_per_batch, seed=settings.seed,
                                      rng=np.random.default_rng([settings.seed, epoch, rank]), rank=rank,
                                      world_size=world_size, epoch=epoch, steps=settings.steps,
                                      keep_fetched=items is None, cutter=cutter)

    @property
    def ratio(self) -> float:
        return self.snapshot.ratio

    @property
    def generation(self) -> int:
        return self.snapshot.generation

    @property
    def wait_seconds(self) -> float:
        """Seconds the consumer waited for the producer (data-path stall)."""
        return self.stream.wait_seconds

    def __iter__(self) -> "CropBatches":
        return self

    def __next__(self) -> Batch:
        try:
            batch = next(self.stream)
        except BatchProducerError as err:  # the project's own errors (a too-small volume) surface as themselves
            if isinstance(err.__cause__, SmartCacheError):
                raise err.__cause__ from err
            raise
        return batch if self.suffix is None else apply_suffix(batch, self.suffix)

    def __len__(self) -> int:
        return len(self.stream)

    def close(self) -> None:
        self.stream.close()

    def __enter__(self) -> "CropBatches":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def crops_of(batch: Batch) -> list[dict[str, torch.Tensor]]:
    """A batch as MONAI's list of per-crop dicts (what ``RandCropByPosNegLabeld(num_samples=n)`` returns)."""
    return [{key: value[i] for key, value in batch.items()} for i in range(int(batch["image"].shape[0]))]


class CropDataset(IterableDataset):
    """``IterableDataset`` of one experiment's crops in MONAI's item form; call :meth:`set_epoch` each epoch.

    Each item is what a MONAI dataset ending in ``RandCropByPosNegLabeld(num_samples=n)`` yields:
    a list of ``n`` crop dicts (``image`` (C, *patch) float32, ``label`` (1, *patch) uint8,
    ``positive`` bool). So MONAI's loaders batch it as they batch their own datasets and count
    as MONAI counts: ``monai.data.DataLoader(ds, batch_size=2)`` and ``ThreadDataLoader(ds,
    batch_size=2)`` give 2 × n crops a step, ``batch_size=None`` gives n. A
    ``torch.utils.data.DataLoader`` needs MONAI's ``collate_fn=list_data_collate``, as it does
    for any MONAI dataset with ``num_samples``. The experiment's ``steps`` counts items here (an
    epoch of ``steps`` items). Crops are made by a background thread already,
    so ``num_workers`` must stay 0. Rank and world size default to the Ray Train context or
    ``torch.distributed``, so the same object works inside ``train_loop_per_worker``.

    A producer failure is raised where the loader iterates and also handed to the experiment:
    ``ThreadDataLoader`` iterates in a thread of its own that drops the exception and ends the
    epoch early, so the experiment raises it again in the training thread at ``finish_epoch``.
    """

    def __init__(self, experiment: Any, *, rank: int | None = None, world_size: int | None = None,
                 **overrides: Any) -> None:
        super().__init__()
        self.experiment, self.overrides, self.epoch = experiment, overrides, 0
        self.rank, self.world_size = _rank_and_world(rank, world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[list[dict[str, torch.Tensor]]]:
        info = get_worker_info()
        if info is not None and info.num_workers > 1:
            raise ConfigError("DataLoader.num_workers", info.num_workers, "0: crops are already made in a "
                              "background thread, and worker processes would repeat the same batches")
        settings = self.experiment.settings.with_overrides(**self.overrides)
        per_item = 1 if settings.batch_counts_volumes else settings.sampler.samples_per_volume  # n crops an item
        overrides = {**self.overrides, "batch_size": per_item}
        try:
            with self.experiment.batches(self.epoch, rank=self.rank, world_size=self.world_size,
                                         **overrides) as batches:
                for batch in batches:
                    yield crops_of(batch)
        except Exception as err:
            self.experiment.note_data_failure(err)
            raise


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values, else Ray Train's context, else torch.distributed, else a single process."""
    if rank is not None and world_size is not None:
        return rank, world_size
    try:
        import ray.train  # only inside Ray Train workers does this have a context

        ctx = ray.train.get_context()
        return ctx.get_world_rank(), ctx.get_world_size()
    except Exception:  # noqa: BLE001 -- not in a Ray Train worker (RuntimeError/ValueError by version)
        pass
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
