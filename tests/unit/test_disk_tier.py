"""Arrow disk tier: round trip, memory-mapped read, truncated and flipped files rejected and deleted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cache_service.disk_tier import DiskTier
from common.volume import PreparedVolume, class_voxel_indices


def _volume(item_id: str = "case/01", seed: int = 0) -> PreparedVolume:
    rng = np.random.default_rng(seed)
    image = rng.random((1, 24, 20, 16), dtype=np.float32)
    label = (rng.random((1, 24, 20, 16)) > 0.8).astype(np.uint8)
    indices, counts = class_voxel_indices(label, 2, image.nbytes)
    return PreparedVolume(item_id=item_id, image=image, label=label, class_indices=indices, class_counts=counts,
                          affine=np.diag([1.0, 1.0, 2.0, 1.0]), original_affine=np.eye(4) * 2,
                          original_shape=(24, 20, 8), prep_seconds=1.25, source={"image": "/x/img.nii.gz"})


def _assert_same(a: PreparedVolume, b: PreparedVolume) -> None:
    assert a.item_id == b.item_id and a.class_counts == b.class_counts
    assert a.original_shape == b.original_shape and a.prep_seconds == b.prep_seconds and a.source == b.source
    for x, y in [(a.image, b.image), (a.label, b.label), (a.affine, b.affine), (a.original_affine, b.original_affine),
                 *zip(a.class_indices, b.class_indices)]:
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)


def test_round_trip(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, "fp1")
    vol = _volume()
    path = tier.write(vol)
    assert path.parent == tmp_path / "fp1" and path.name.endswith(".arrow") and "/" not in path.name[:-6]
    got, why = tier.read(vol.item_id)
    assert why is None and got is not None
    _assert_same(vol, got)
    assert not got.image.flags.writeable  # a view into the memory map, not a copy
    assert not list(path.parent.glob(".tmp-*"))


def test_absent_item(tmp_path: Path) -> None:
    assert DiskTier(tmp_path, "fp").read("nope") == (None, None)


def test_fingerprints_are_separate(tmp_path: Path) -> None:
    DiskTier(tmp_path, "a").write(_volume("x"))
    assert DiskTier(tmp_path, "b").read("x") == (None, None)


def test_truncated_file_is_rejected_and_deleted(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, "fp")
    path = tier.write(_volume("x"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    got, why = tier.read("x")
    assert got is None and why is not None and "corrupt" in why
    assert not path.exists()


@pytest.mark.parametrize("where", [0.3, 0.5, 0.7])
def test_flipped_byte_is_rejected_and_deleted(tmp_path: Path, where: float) -> None:
    tier = DiskTier(tmp_path, "fp")
    vol = _volume("x")
    path = tier.write(vol)
    data = bytearray(path.read_bytes())
    start = bytes(data).find(vol.image.tobytes()[:64])  # flip a byte inside the image data
    assert start > 0
    data[start + int(vol.image.nbytes * where)] ^= 0xFF
    path.write_bytes(bytes(data))
    got, why = tier.read("x")
    assert got is None and "checksum" in why
    assert not path.exists()
    tier.write(vol)  # re-made after rejection
    again, why = tier.read("x")
    assert why is None
    _assert_same(vol, again)


def test_garbage_and_wrong_item_are_rejected(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, "fp")
    tier.dir.mkdir(parents=True)
    tier.path("g").write_bytes(b"not an arrow file at all")
    assert tier.read("g")[0] is None and not tier.path("g").exists()
    tier.write(_volume("y"))
    tier.path("y").rename(tier.path("z"))
    got, why = tier.read("z")
    assert got is None and "holds item" in why
