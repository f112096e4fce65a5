"""What connect tells a user: a running cache with other settings, a chain without a crop; writable volumes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, RandFlipd

from cache_service.sdk.mismatch import CacheSettingsWarning, setting_differences, warn_if_different
from cache_service.status import CacheStatus
from common.config import CacheConfig
from common.volume import PreparedVolume, class_voxel_indices


def _running(cache_num: int = 8, replace_num: int = 2, byte_budget: int = 8 * 2**30, disk_tier: str = "off",
             budget_message: str = "") -> CacheStatus:
    return CacheStatus(fingerprint="fp", name="smartcache-fp", state="ready", train_items=16, cache_num=cache_num,
                       capacity=cache_num, items_cached=cache_num, pool=[], bytes_cached=0, byte_budget=byte_budget,
                       budget_message=budget_message, generation=0, rotations=0, replace_num=replace_num,
                       replacements_pending=0, replacements_ready=0, val_items_total=0, val_items_cached=0,
                       disk_tier=disk_tier)


def test_same_settings_join_quietly() -> None:
    asked = CacheConfig(cache_num=8, replace_rate=0.25, disk_dir=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_different(asked, _running()) == []


def test_each_difference_is_named() -> None:
    asked = CacheConfig(cache_num=4, replace_rate=1.0, byte_budget="1GiB", disk_dir=None)
    found = setting_differences(asked, _running())
    assert found[0].startswith("cache_num 8 (asked 4") and "replace_rate=1.0" in found[1]
    assert found[2] == f"byte_budget {8 * 2**30} B (asked {2**30} B)" and len(found) == 3
    with pytest.warns(CacheSettingsWarning, match=r"already running with other settings: cache_num 8.*stop it"):
        warn_if_different(asked, _running())


def test_a_budget_left_at_its_default_or_lowered_by_the_store_is_no_difference() -> None:
    assert setting_differences(CacheConfig(cache_num=8, replace_rate=0.25, disk_dir=None),
                               _running(byte_budget=2**30)) == []
    lowered = _running(byte_budget=2**30, budget_message="byte budget ... more than the object store can hold")
    assert setting_differences(CacheConfig(cache_num=8, replace_rate=0.25, byte_budget="8GiB", disk_dir=None),
                               lowered) == []


def test_disk_tier_difference() -> None:
    found = setting_differences(CacheConfig(cache_num=8, replace_rate=0.25, disk_dir="/tmp/x"), _running())
    assert found == ["disk tier off (asked disk_dir=/tmp/x)"]


def test_a_chain_without_a_crop_warns_at_connect(tmp_path, make_case, make_dataset, monkeypatch) -> None:
    from cache_service.sdk.api import SmartCache
    from common.config import config_from_dict

    image = np.zeros((8, 8, 8), np.float32)
    image[2:4, 2:4, 2:4] = 1.0
    root = tmp_path / "ds"
    root.mkdir()
    make_dataset(root, [make_case(root, f"c{i}", image, image.astype(np.uint8), np.eye(4)) for i in range(5)])
    cfg = config_from_dict({"data": {"dataset_dir": str(root)}})
    chain = Compose([LoadImaged(keys=["image", "label"]), EnsureChannelFirstd(keys=["image", "label"]),
                     RandFlipd(keys=["image", "label"], prob=0.5)])

    class _Stop(Exception):
        pass

    def refuse(*_a: object, **_k: object) -> None:
        raise _Stop  # the warning comes before the cache is asked for

    monkeypatch.setattr("cache_service.client.get_or_create_cache", refuse)
    with pytest.warns(UserWarning, match=r"no RandCropByPosNegLabeld.*patch_size"), pytest.raises(_Stop):
        SmartCache.from_config(cfg, transforms=chain)


def test_writable_copy_lets_torch_take_validation_volumes_without_warning() -> None:
    label = np.zeros((1, 4, 4, 4), np.uint8)
    image = np.ones((1, 4, 4, 4), np.float32)
    image.flags.writeable = False  # as ray.get returns it
    idx, counts = class_voxel_indices(label, 2, image.nbytes)
    vol = PreparedVolume("a", image, label, idx, counts, np.eye(4), np.eye(4), (4, 4, 4)).writable_copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.as_tensor(vol.image).sum() == 64
    assert vol.image.flags.writeable and not np.shares_memory(vol.image, image)
