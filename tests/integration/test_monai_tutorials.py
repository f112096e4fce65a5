"""MONAI's own tutorial chains (spleen, fast training) through SmartCache.connect, as their users run them.

Our copies of the train chains of ``3d_segmentation/spleen_segmentation_3d.ipynb`` and
``acceleration/fast_training_tutorial.ipynb``, with the device set to the CPU and a patch that
fits the small demo volumes: MONAI's loaders over ``exp.dataset()``, ``num_samples=4`` counted as
MONAI counts it, one-hot validation, too-small volumes and a prefix that fails on every volume.
"""

from __future__ import annotations

import uuid
import warnings
from pathlib import Path

import pytest
import ray
import torch
from monai.data import DataLoader as MonaiDataLoader
from monai.data import ThreadDataLoader
from monai.transforms import (
    AsDiscrete,
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    FgBgToIndicesd,
    LoadImaged,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    Spacingd,
)

from cache_service import SmartCache
from cache_service.client import stop_caches
from common.demo_data import make_demo_data
from common.errors import DataError, PoolFailedError

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KEYS = ["image", "label"]
PATCH = (16, 16, 16)


def spleen_chain() -> Compose:
    return Compose([
        LoadImaged(keys=KEYS), EnsureChannelFirstd(keys=KEYS),
        ScaleIntensityRanged(keys=["image"], a_min=-57, a_max=164, b_min=0.0, b_max=1.0, clip=True),
        CropForegroundd(keys=KEYS, source_key="image"), Orientationd(keys=KEYS, axcodes="RAS"),
        Spacingd(keys=KEYS, pixdim=(1.5, 1.5, 2.0), mode=("bilinear", "nearest")),
        RandCropByPosNegLabeld(keys=KEYS, label_key="label", spatial_size=PATCH, pos=1, neg=1, num_samples=4,
                               image_key="image", image_threshold=0),
    ])


def fast_chain() -> Compose:
    return Compose([
        LoadImaged(keys=KEYS), EnsureChannelFirstd(keys=KEYS), Orientationd(keys=KEYS, axcodes="RAS"),
        Spacingd(keys=KEYS, pixdim=(1.5, 1.5, 2.0), mode=("bilinear", "nearest")),
        ScaleIntensityRanged(keys=["image"], a_min=-57, a_max=164, b_min=0.0, b_max=1.0, clip=True),
        CropForegroundd(keys=KEYS, source_key="image"),
        FgBgToIndicesd(keys="label", fg_postfix="_fg", bg_postfix="_bg", image_key="image"),
        EnsureTyped(keys=KEYS, device=torch.device("cpu"), track_meta=False),
        RandCropByPosNegLabeld(keys=KEYS, label_key="label", spatial_size=PATCH, pos=1, neg=1, num_samples=4,
                               fg_indices_key="label_fg", bg_indices_key="label_bg"),
        RandFlipd(keys=KEYS, prob=0.5, spatial_axis=0), RandFlipd(keys=KEYS, prob=0.5, spatial_axis=1),
        RandFlipd(keys=KEYS, prob=0.5, spatial_axis=2), RandRotate90d(keys=KEYS, prob=0.5, max_k=3),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
    ])


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("tutorials"), cases=6, size=48, seed=5)


def _connect(data: Path, chain: Compose, namespace: str) -> SmartCache:
    return SmartCache.connect(data, transforms=chain, cache_num=3, replace_rate=0.5, val_fraction=0.25,
                              address=None, namespace=namespace,
                              settings={"cache": {"task_num_cpus": 0.25, "disk_dir": None}})


@pytest.mark.timeout(300)
def test_fast_tutorial_chain_with_thread_loader_and_one_hot_validation(ray_cluster, data) -> None:
    namespace = f"tut-{uuid.uuid4().hex[:6]}"
    try:
        cache = _connect(data, fast_chain(), namespace)
        classes = cache.catalog.num_classes
        with cache.experiment("fast", batch_size=2, steps=2) as exp:
            for ref in exp.snapshot(0).refs:  # FgBgToIndicesd(image_key="image"): negatives inside the body
                vol = ray.get(ref)
                assert (vol.image[0].reshape(-1)[vol.background_indices()] > 0).all()
            with exp.batches(0) as batches:
                assert [b["image"].shape for b in batches] == [(8, 1, *PATCH)] * 2  # 2 volumes x num_samples=4
            ds = exp.dataset()
            loader = ThreadDataLoader(ds, num_workers=0, batch_size=2)
            steps = list(loader)
            assert [b["image"].shape[0] for b in steps] == [8] and steps[0]["label"].shape == (8, 1, *PATCH)
            exp.finish_epoch(0)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # no "NumPy array is not writable" from torch
                labels = [torch.as_tensor(v.label) for v in exp.validation_volumes()]
            wrong = [torch.zeros_like(lab) for lab in labels]  # everything predicted background
            one_hot, argmax_one_hot = AsDiscrete(to_onehot=classes), AsDiscrete(argmax=True, to_onehot=classes)
            maps = exp.report_validation(0, wrong, labels)
            hot = exp.report_validation(1, [argmax_one_hot(one_hot(w) * 5.0) for w in wrong],
                                        [one_hot(lab) for lab in labels])
            assert hot.dice_per_class == pytest.approx(maps.dice_per_class) and max(hot.dice_per_class) == 0.0
            perfect = exp.report_validation(2, [one_hot(lab) for lab in labels], labels)
            assert perfect.dice_per_class == pytest.approx([1.0] * (classes - 1))
    finally:
        stop_caches(namespace)


@pytest.mark.timeout(300)
def test_spleen_chain_with_monai_loader_and_too_small_volumes(ray_cluster, data) -> None:
    namespace = f"tut-{uuid.uuid4().hex[:6]}"
    try:
        cache = _connect(data, spleen_chain(), namespace)
        with cache.experiment("spleen", steps=2) as exp:
            batches = list(MonaiDataLoader(exp.dataset(), batch_size=2))  # the tutorial's loader and batch size
            assert [b["image"].shape for b in batches] == [(8, 1, *PATCH)]
            with pytest.raises(DataError) as info:
                exp.batches(0, patch_size=(400, 400, 400))
            text = str(info.value)
            assert f"{len(exp.snapshot(0).item_ids)} volume(s)" in text and "lower patch_size=" in text
    finally:
        stop_caches(namespace)


@pytest.mark.timeout(300)
def test_a_prefix_failing_on_every_volume_is_raised_at_connect(ray_cluster, data) -> None:
    namespace = f"tut-{uuid.uuid4().hex[:6]}"
    broken = Compose([LoadImaged(keys=[*KEYS, "mask"]), *fast_chain().transforms[1:]])  # no "mask" in any case
    try:
        with pytest.raises(PoolFailedError, match="mask"):
            _connect(data, broken, namespace)
    finally:
        stop_caches(namespace)
