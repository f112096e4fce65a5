"""Bad input on a real cache: a huge header and a 4D image quarantined with their causes, the rest served;
a prefix that fails on every volume raised at connect with its real cause."""

from __future__ import annotations

import gzip
import shutil
import struct
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import ray
import torch
from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged

from cache_service import SmartCache
from cache_service.client import stop_caches, wait_until_ready
from common.catalog import load_catalog
from common.errors import PoolFailedError

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
