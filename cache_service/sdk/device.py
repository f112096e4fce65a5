"""The device crop path (``sampler.device: cuda``): crops cut where the network trains.

The host path copies every crop on the CPU and ships the batch to the GPU. Here a worker
uploads each volume of its shard once per pool generation (``ray.get`` is a zero-copy read of
shared memory, then one host-to-device copy), keeps it in device memory within
``sampler.gpu_cache_bytes``, and cuts positive/negative crops, flips and intensity
augmentation on the device: per step only the crop positions cross the bus, not the voxels.

Every random decision still comes from the planner of :class:`~cache_service.sdk.stream.CropBatchStream`
(centres drawn from the cached class indices with the adaptive ratio, flips, an augmentation
seed per batch), and the augmentation draws its parameters through the same ``draw`` methods
as the CPU transforms, so for a given seed this path delivers exactly the crops of the host
path. A volume the budget cannot hold is cut on the CPU and uploaded as a crop (counted in
``fallbacks``). With ``device="cpu"`` the same code runs in the tests.
"""

from __future__ import annotations

import logging
import warnings
from typing import Collection, Sequence

import numpy as np
import torch

from cache_service.sdk.stream import Batch, BatchPlan
from common.augment import RandContrast, RandFlip, RandScaleIntensity, RandShiftIntensity, build_transforms, \
    without_flip
from common.config import AugmentConfig
from common.errors import ConfigError
from common.sampling import crop_into
from common.volume import PreparedVolume

log = logging.getLogger(__name__)

__all__ = ["DeviceCutter", "DeviceVolumes", "crop_on_device"]


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    with warnings.catch_warnings():  # object-store arrays are read-only; they are only ever read here
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array).to(device)


class DeviceVolumes:
    """The shard's volumes in device memory: uploaded once per pool generation, within a byte budget."""

    def __init__(self, device: torch.device | str, budget_bytes: int) -> None:
        self.device = torch.device(device)
        self.budget_bytes = int(budget_bytes)
        self._held: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.bytes_held = 0
        self.uploads = 0
        self.over_budget: set[str] = set()

    def keep_only(self, item_ids: Collection[str]) -> None:
        """Free the volumes that left the pool (call at each new snapshot); the rest stay uploaded."""
        for item_id in [i for i in self._held if i not in item_ids]:
            image, label = self._held.pop(item_id)
            self.bytes_held -= image.nbytes + label.nbytes
        self.over_budget &= set(item_ids)

    def get(self, volume: PreparedVolume) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(image, label) on the device, uploading on first use; None when the budget cannot hold it."""
        held = self._held.get(volume.item_id)
        if held is not None:
            return held
        need = volume.image.nbytes + volume.label.nbytes
        if self.bytes_held + need > self.budget_bytes:
            if volume.item_id not in self.over_budget:
                log.info("%s (%d MiB) does not fit sampler.gpu_cache_bytes=%d MiB beside %d MiB held; its crops "
                         "are cut on the CPU", volume.item_id, need >> 20, self.budget_bytes >> 20,
                         self.bytes_held >> 20)
                self.over_budget.add(volume.item_id)
            return None
        held = (_to_device(volume.image, self.device), _to_device(volume.label, self.device))
        self._held[volume.item_id] = held
        self.bytes_held += need
        self.uploads += 1
        return held


def crop_on_device(out: torch.Tensor, volume: torch.Tensor, centre: Sequence[int], patch: Sequence[int],
                   flip: Sequence[bool]) -> None:
    """Copy the patch around ``centre`` (centre at index p // 2) into ``out``, zero outside, mirrored per ``flip``."""
    spatial = volume.shape[1:]
    start = [int(c) - p // 2 for c, p in zip(centre, patch)]
    lo = [max(0, s) for s in start]
    hi = [min(n, s + p) for n, s, p in zip(spatial, start, patch)]
    src = (slice(None), *(slice(a, b) for a, b in zip(lo, hi)))
    if lo == start and all(b - a == p for a, b, p in zip(lo, hi, patch)):
        out.copy_(volume[src])
    else:
        out.zero_()
        if all(b > a for a, b in zip(lo, hi)):
            dst = (slice(None), *(slice(a - s, b - s) for a, b, s in zip(lo, hi, start)))
            out[dst] = volume[src]
    dims = [1 + axis for axis, f in enumerate(flip) if f]
    if dims:
        out.copy_(torch.flip(out, dims))


def _contrast(x: torch.Tensor, gamma: float) -> None:
    """RandContrast on a tensor, in place, without reading min/max back to the host."""
    lo, hi = x.amin(), x.amax()
    span = hi - lo
    scaled = ((x - lo) / span.clamp_min(1e-12)).pow(float(np.float32(gamma))) * span + lo
    x.copy_(torch.where(span > 1e-12, scaled, x))


def _augment_on_device(images: torch.Tensor, labels: torch.Tensor, cfg: AugmentConfig,
                       rng: np.random.Generator) -> None:
    """``common.augment.augment_batch`` on device tensors, in place, with the very same draws.

    There is no affine branch: :class:`DeviceCutter`, the only caller, refuses ``affine_prob > 0``
    when it is built, so ``RandAffine`` never draws here.
    """
    transforms = build_transforms(cfg)
    for i in range(images.shape[0]):
        for transform in transforms:
            params = transform.draw(rng)
            if params is None:
                continue
            if isinstance(transform, RandFlip):
                images[i] = torch.flip(images[i], list(params))
                labels[i] = torch.flip(labels[i], list(params))
            elif isinstance(transform, RandShiftIntensity):
                images[i] += float(np.float32(params))
            elif isinstance(transform, RandScaleIntensity):
                images[i] *= float(np.float32(params))
            elif isinstance(transform, RandContrast):
                _contrast(images[i], params)


class DeviceCutter:
    """Executes the planner's batch plans on ``device``: a drop-in ``cutter`` for CropBatchStream."""

    def __init__(self, volumes: DeviceVolumes, patch: Sequence[int], augment: AugmentConfig) -> None:
        # the config refuses this pairing too (ExperimentConfig); an SDK user can build a cutter without a config
        if augment.affine_prob > 0:
            raise ConfigError("augmentation.affine_prob", augment.affine_prob,
                              "0 with the device crop path (it flips and shifts intensities but does not warp); "
                              "or cut crops on the host (no device_volumes, sampler.device=cpu)")
        self.volumes, self.device = volumes, volumes.device
        self.patch = tuple(int(p) for p in patch)
        self.augment_rest = without_flip(augment)
        self.fallbacks = 0  # crops cut on the CPU because their volume was over the budget

    def _cut_on_host(self, volume: PreparedVolume, centre: np.ndarray, flip: np.ndarray,
                     out_image: torch.Tensor, out_label: torch.Tensor) -> None:
        image = np.empty((volume.image.shape[0], *self.patch), dtype=np.float32)
        label = np.empty((volume.label.shape[0], *self.patch), dtype=np.uint8)
        crop_into(image, label, volume.image, volume.label, centre, self.patch, flip=flip)
        out_image.copy_(torch.from_numpy(image))
        out_label.copy_(torch.from_numpy(label))
        self.fallbacks += 1

    def __call__(self, plan: BatchPlan) -> Batch:
        first = plan.crops[0].volume
        n = len(plan.crops)
        images = torch.empty((n, first.image.shape[0], *self.patch), dtype=torch.float32, device=self.device)
        labels = torch.empty((n, first.label.shape[0], *self.patch), dtype=torch.uint8, device=self.device)
        for i, c in enumerate(plan.crops):
            held = self.volumes.get(c.volume)
            if held is None:
                self._cut_on_host(c.volume, c.centre, plan.flips[i], images[i], labels[i])
                continue
            crop_on_device(images[i], held[0], c.centre, self.patch, plan.flips[i])
            crop_on_device(labels[i], held[1], c.centre, self.patch, plan.flips[i])
        if plan.augment_seed is not None:
            _augment_on_device(images, labels, self.augment_rest, np.random.default_rng(plan.augment_seed))
        positive = torch.tensor([c.positive for c in plan.crops], dtype=torch.bool)  # stays on the host
        return {"image": images, "label": labels, "positive": positive}
