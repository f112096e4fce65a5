"""The device crop path with device "cpu": the same crops as the host path for the same seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_stream import SAMPLER, VOLUMES, identity, make_volume

from cache_service.sdk.device import DeviceCutter, DeviceVolumes, crop_on_device
from cache_service.sdk.stream import CropBatchStream
from common.config import AugmentConfig, load_config
from common.errors import ConfigError

CUDA = torch.cuda.is_available()
BIG = 1 << 30


def _batches(augment: AugmentConfig, cutter: DeviceCutter | None = None, **kw: object) -> list[dict]:
    args = dict(refs=VOLUMES, fetch=identity, ratio=2.0, sampler=SAMPLER, augment=augment, batch_size=4, seed=5,
                epoch=1, cutter=cutter)
    args.update(kw)
    with CropBatchStream(**args) as stream:
        return [{k: v.cpu() for k, v in b.items()} for b in stream]


def _device_cutter(augment: AugmentConfig, device: str = "cpu", budget: int = BIG) -> DeviceCutter:
    return DeviceCutter(DeviceVolumes(device, budget), SAMPLER.patch_size, augment)


@pytest.mark.parametrize("augment", [
    AugmentConfig(flip_prob=0.5, shift_prob=0.5),  # the paper's augmentation
    AugmentConfig(flip_prob=0.5, shift_prob=0.5, scale_prob=0.5),
    AugmentConfig(flip_prob=0.0, shift_prob=0.0),
])
def test_device_path_gives_the_host_paths_crops(augment: AugmentConfig) -> None:
    host = _batches(augment)
    device = _batches(augment, _device_cutter(augment))
    assert len(host) == len(device) > 3
    for h, d in zip(host, device):
        assert torch.equal(h["image"], d["image"]) and torch.equal(h["label"], d["label"])
        assert torch.equal(h["positive"], d["positive"])


def test_contrast_on_the_device_matches_to_rounding() -> None:
    augment = AugmentConfig(flip_prob=0.5, shift_prob=0.5, contrast_prob=0.7)
    for h, d in zip(_batches(augment), _batches(augment, _device_cutter(augment)), strict=True):
        torch.testing.assert_close(h["image"], d["image"], rtol=1e-5, atol=1e-5)
        assert torch.equal(h["label"], d["label"])


def test_volumes_over_the_budget_fall_back_to_the_cpu_with_the_same_crops() -> None:
    augment = AugmentConfig(flip_prob=0.5, shift_prob=0.5)
    one_volume = VOLUMES[0].image.nbytes + VOLUMES[0].label.nbytes
    cutter = _device_cutter(augment, budget=2 * one_volume)
    device = _batches(augment, cutter)
    assert cutter.fallbacks > 0 and cutter.volumes.uploads == 2
    assert cutter.volumes.bytes_held <= 2 * one_volume
    for h, d in zip(_batches(augment), device, strict=True):
        assert torch.equal(h["image"], d["image"]) and torch.equal(h["label"], d["label"])


def test_each_volume_is_uploaded_once_per_generation_and_leavers_are_freed() -> None:
    volumes = DeviceVolumes("cpu", BIG)
    cutter = DeviceCutter(volumes, SAMPLER.patch_size, AugmentConfig())
    _batches(AugmentConfig(), cutter, steps=20)  # cycles the shard many times
    assert volumes.uploads == len(VOLUMES)
    volumes.keep_only({"v0", "v1"})
    assert volumes.bytes_held == sum(v.image.nbytes + v.label.nbytes for v in VOLUMES[:2])


def test_border_crop_is_zero_outside_and_mirrored() -> None:
    vol = make_volume(3, shape=(6, 6, 6))
    image = torch.from_numpy(np.array(vol.image))
    out = torch.empty((1, 4, 4, 4))
    crop_on_device(out, image, (0, 5, 2), (4, 4, 4), (False, False, False))
    # patch start = centre - 2: x from -2 (two zero planes), y from 3 to 7 (7 is outside)
    assert torch.equal(out[0, :2], torch.zeros(2, 4, 4)) and torch.equal(out[0, :, 3], torch.zeros(4, 4))
    assert torch.equal(out[0, 2:, :3, :], image[0, 0:2, 3:6, 0:4])
    flipped = torch.empty_like(out)
    crop_on_device(flipped, image, (0, 5, 2), (4, 4, 4), (True, False, True))
    assert torch.equal(flipped, torch.flip(out, [1, 3]))


def test_affine_augmentation_is_refused_with_the_fix() -> None:
    """An SDK user builds the cutter without a config: the cutter itself refuses, naming the field and the fix."""
    with pytest.raises(ConfigError, match=r"'augmentation.affine_prob' = 0.5 .*no device_volumes, sampler.device=cpu"):
        _device_cutter(AugmentConfig(affine_prob=0.5))


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_path_gives_the_host_paths_crops() -> None:
    augment = AugmentConfig(flip_prob=0.5, shift_prob=0.5)
    for h, d in zip(_batches(augment), _batches(augment, _device_cutter(augment, "cuda")), strict=True):
        assert torch.equal(h["image"], d["image"]) and torch.equal(h["label"], d["label"])


def test_config_refuses_affine_with_the_device_path() -> None:
    with pytest.raises(ConfigError, match="sampler.device=cpu"):
        load_config(None, ["sampler.device=cuda", "augmentation.affine_prob=0.3"])
    assert load_config(None, ["sampler.device=cuda"]).sampler.device == "cuda"
