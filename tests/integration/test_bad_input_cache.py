"""Bad input on a real cache: a huge header and a 4D image quarantined with their causes, the rest served;
a prefix that fails on every volume raised at connect with its real cause; a patch larger than volumes
refused at connect, naming every such case."""

from __future__ import annotations

import gzip
import shutil
import struct
import uuid
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import ray
import torch
from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged, RandCropByPosNegLabeld

from cache_service import SmartCache
from cache_service.client import stop_caches, wait_until_ready
from common.catalog import load_catalog
from common.errors import DataError, PoolFailedError

pytestmark = pytest.mark.integration
KEYS = ["image", "label"]


def _declare_huge(path: Path) -> None:
    """Make the header of a .nii.gz declare 10000^3 voxels; the file stays a few KB."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into("<8h", raw, 40, 3, 10000, 10000, 10000, 1, 1, 1, 1)
    path.write_bytes(gzip.compress(bytes(raw)))


def _make_4d(path: Path) -> None:
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, np.float32)
    nib.save(nib.Nifti1Image(np.stack([data, data, data], axis=-1), img.affine), str(path))


@pytest.mark.timeout(180)
def test_huge_header_and_4d_image_quarantined_with_causes_rest_served(make_cache, demo_root, config_for,
                                                                      tmp_path: Path) -> None:
    root = Path(shutil.copytree(demo_root, tmp_path / "data"))
    train = load_catalog(root).train
    huge, four_d = train[0], train[1]
    _declare_huge(Path(huge.image))
    _make_4d(Path(four_d.image))
    # the driver's CT statistics pass reads every training case first: it must leave both out, not die
    handle, catalog, _, _ = make_cache(root, config_for(cache_num=3))
    handle.register("exp")
    status = wait_until_ready(handle, timeout_s=120, progress=False)
    errors = {q.item_id: q.error for q in status.quarantined}
    assert set(errors) == {huge.item_id, four_d.item_id}
    assert errors[huge.item_id].startswith(huge.image) and "preprocessing.max_voxels" in errors[huge.item_id]
    assert errors[four_d.item_id].startswith(four_d.image) and "3 channel(s)" in errors[four_d.item_id]
    assert not any("applying transform" in e or " at 0x" in e for e in errors.values())
    assert status.state == "ready" and status.items_cached == 3
    snap = handle.snapshot("exp")
    assert {huge.item_id, four_d.item_id}.isdisjoint(snap.item_ids)
    assert all(ray.get(r).image.shape[0] == 1 for r in snap.refs)  # every served volume is one-channel 3D
    handle.unregister("exp")


@pytest.mark.timeout(180)
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA for the device prefix to fail")
def test_prefix_failing_on_every_volume_raises_at_connect_with_its_cause(ray_cluster, demo_root) -> None:
    namespace = f"badprefix-{uuid.uuid4().hex[:6]}"
    chain = Compose([LoadImaged(keys=KEYS), EnsureChannelFirstd(keys=KEYS), EnsureTyped(keys=KEYS, device="cuda:0")])
    try:
        with pytest.raises(PoolFailedError) as info:
            SmartCache.connect(demo_root, transforms=chain, cache_num=2, address=None, namespace=namespace,
                               settings={"cache": {"task_num_cpus": 0.25, "disk_dir": None}})
        text = str(info.value)
        assert "CUDA" in text and "applying transform" not in text and " at 0x" not in text
    finally:
        stop_caches(namespace)


def _patch_too_big_for_some(shapes: dict[str, tuple[int, ...]]) -> tuple[int, set[str]]:
    """A cube patch side that some training volumes are too small for (all of them if they are alike)."""
    side = max(min(s) for s in shapes.values())
    small = {case for case, s in shapes.items() if min(s) < side}
    return (side, small) if small else (side + 1, set(shapes))


@pytest.mark.timeout(240)
def test_a_patch_larger_than_volumes_is_refused_at_connect_naming_every_case(ray_cluster, demo_root) -> None:
    namespace = f"smallvol-{uuid.uuid4().hex[:6]}"
    train = load_catalog(demo_root).train
    shapes = {r.item_id: tuple(nib.load(r.image).shape) for r in train}  # LoadImaged + channel-first keep them
    side, small = _patch_too_big_for_some(shapes)
    prefix = [LoadImaged(keys=KEYS), EnsureChannelFirstd(keys=KEYS)]
    crop = RandCropByPosNegLabeld(keys=KEYS, label_key="label", spatial_size=(side,) * 3, num_samples=2)
    kw: dict[str, Any] = {"cache_num": None, "address": None, "namespace": namespace,
                          "settings": {"cache": {"task_num_cpus": 0.25, "disk_dir": None}}}
    try:
        with pytest.raises(DataError) as info:  # the whole pool is prepared: every too-small case is known
            SmartCache.connect(demo_root, transforms=Compose([*prefix, crop]), **kw)
        text = str(info.value)
        assert all(f"{case} {shapes[case]}" in text for case in small), text
        assert not any(f"{case} (" in text for case in set(shapes) - small), text
        assert "lower transforms[2].spatial_size (RandCropByPosNegLabeld) to at most" in text
        assert "not checked" not in text
        fits = RandCropByPosNegLabeld(keys=KEYS, label_key="label", spatial_size=(4, 4, 4), num_samples=2)
        cache = SmartCache.connect(demo_root, transforms=Compose([*prefix, fits]), **kw)  # same prefix, same cache
        with pytest.raises(DataError, match=r"lower patch_size= to at most"):
            cache.experiment("too-big", patch_size=(side,) * 3)
        assert cache.status().quarantined == []  # one consumer's patch quarantines nothing at the shared cache
    finally:
        stop_caches(namespace)
