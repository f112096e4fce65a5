"""Headers that lie, images with the wrong channel count, and the real cause of a failing transform."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureTyped, MapTransform

from cache_service.client import _preprocessor_bytes
from common.catalog import load_catalog
from common.config import DataConfig, PreprocessConfig, load_config
from common.errors import DataError
from common.nifti import LoadCheckedPaird, read_nifti
from common.preprocess import Preprocessor, build_preprocessor, compute_intensity_stats
from tests.unit.conftest import write_case, write_dataset

AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])
SHAPE = (24, 24, 16)
HUGE = (10000, 10000, 10000)


def _case(root: Path, name: str, image: np.ndarray | None = None) -> dict[str, str]:
    rng = np.random.default_rng(len(name))
    label = np.zeros(SHAPE, np.uint8)
    label[8:16, 8:16, 4:10] = 1
    img = rng.normal(0, 100, SHAPE).astype(np.float32) if image is None else image
    return write_case(root, name, img, label, AFFINE)


def _declare_shape(path: Path, shape: tuple[int, ...]) -> None:
    """Rewrite the header's dim field (offset 40, eight int16) of a .nii or .nii.gz in place."""
    gz = path.name.endswith(".gz")
    raw = bytearray(gzip.decompress(path.read_bytes()) if gz else path.read_bytes())
    struct.pack_into("<8h", raw, 40, len(shape), *shape, *([1] * (7 - len(shape))))
    path.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))


def _catalog(root: Path, items: list[dict[str, str]], modality: str = "MRI"):
    write_dataset(root, items, modality=modality)
    return load_catalog(root, DataConfig(val_fraction=0.0))


def _prep(catalog, **cfg) -> Preprocessor:
    return build_preprocessor(catalog, PreprocessConfig(normalization="mri", **cfg), None)


def test_huge_header_of_uncompressed_file_refused_by_its_size(tmp_path: Path) -> None:
    path = tmp_path / "huge.nii"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), AFFINE), path)
    _declare_shape(path, HUGE)
    with pytest.raises(DataError, match=r"10000, 10000, 10000.*file has only \d+ bytes") as info:
        read_nifti(str(path))
    assert info.value.path == str(path)


def test_huge_header_of_compressed_file_refused_by_the_voxel_limit(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path, [_case(tmp_path, "a"), _case(tmp_path, "b")])
    _declare_shape(Path(catalog.train[0].image), HUGE)
    with pytest.raises(DataError, match="preprocessing.max_voxels") as info:
        _prep(catalog)(catalog.train[0])
    assert info.value.path == catalog.train[0].image and "1000000000000 voxels" in str(info.value)
    assert _prep(catalog)(catalog.train[1]).image.shape[0] == 1  # the good case still prepares


def test_configured_voxel_limit_is_honoured(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path, [_case(tmp_path, "a")])
    with pytest.raises(DataError, match="more than the limit of 1000"):
        _prep(catalog, max_voxels=1000)(catalog.train[0])


def test_4d_image_among_3d_ones_names_file_and_expectation(tmp_path: Path) -> None:
    four_d = np.random.default_rng(1).normal(0, 1, (*SHAPE, 3)).astype(np.float32)
    catalog = _catalog(tmp_path, [_case(tmp_path, "a"), _case(tmp_path, "b", four_d)])
    with pytest.raises(DataError, match=r"3 channel\(s\).*'modality' lists 1: expected a 3D volume") as info:
        _prep(catalog)(catalog.record("b"))
    assert info.value.path == catalog.record("b").image


def test_channel_count_follows_dataset_json_modalities(tmp_path: Path) -> None:
    two = np.random.default_rng(1).normal(0, 1, (*SHAPE, 2)).astype(np.float32)
    items = [_case(tmp_path, "a", two), _case(tmp_path, "b")]
    meta = {"name": "T", "modality": {"0": "FLAIR", "1": "T1w"}, "labels": {"0": "bg", "1": "organ"},
            "training": items}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    catalog = load_catalog(tmp_path, DataConfig(val_fraction=0.0))
    assert catalog.num_channels == 2
    assert _prep(catalog)(catalog.record("a")).image.shape[0] == 2
    with pytest.raises(DataError, match=r"1 channel\(s\).*lists 2: expected a 4D volume with 2 channels"):
        _prep(catalog)(catalog.record("b"))


class _FailsInside(MapTransform):
    """A deterministic transform failing the way a device transform does on a machine without CUDA."""

    def __call__(self, data: dict) -> dict:
        raise AssertionError("Torch not compiled with CUDA enabled")


def _user_prefix(catalog, step: MapTransform) -> Preprocessor:
    return Preprocessor(PreprocessConfig(), catalog.num_classes, "none", None,
                        chain=Compose([LoadCheckedPaird(catalog.num_classes), step]))


def test_data_error_carries_the_root_cause_not_the_transform_repr(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path, [_case(tmp_path, "a")])
    with pytest.raises(DataError) as info:
        _user_prefix(catalog, _FailsInside(keys="image"))(catalog.train[0])
    text = str(info.value)
    assert "AssertionError: Torch not compiled with CUDA enabled" in text
    assert "applying transform" not in text and " at 0x" not in text and info.value.path == catalog.train[0].image


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA for EnsureTyped to fail")
def test_ensure_typed_on_cuda_without_cuda_shows_torch_message(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path, [_case(tmp_path, "a")])
    with pytest.raises(DataError, match="CUDA") as info:
        _user_prefix(catalog, EnsureTyped(keys="image", device="cuda:0"))(catalog.train[0])
    assert "applying transform" not in str(info.value)


def test_statistics_pass_leaves_out_a_huge_header_and_a_4d_image(tmp_path: Path) -> None:
    four_d = np.zeros((*SHAPE, 3), np.float32)
    items = [_case(tmp_path, "a"), _case(tmp_path, "b"), _case(tmp_path, "huge"), _case(tmp_path, "multi", four_d)]
    write_dataset(tmp_path, items, modality="CT")
    _declare_shape(tmp_path / "imagesTr" / "huge.nii.gz", HUGE)
    cfg = load_config(None, [f"data.dataset_dir={tmp_path}", "data.val_fraction=0", f"cache.stats_dir={tmp_path}"])
    catalog = load_catalog(tmp_path, cfg.data)
    assert isinstance(_preprocessor_bytes(catalog, cfg, "fp"), bytes)
    stored = json.loads((tmp_path / "fp.intensity.json").read_text())
    assert stored["num_volumes"] == 2


def test_corrupt_statistics_file_is_recomputed(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path, [_case(tmp_path, "a"), _case(tmp_path, "b")], modality="CT")
    fresh = compute_intensity_stats(catalog.train, 2, (5.0, 95.0))
    stored = tmp_path / "stats" / "fp.intensity.json"
    stored.parent.mkdir()
    for garbage in (b"{not json", b"\xff\xfe\x00", b'{"lower": 1}', b"[]"):
        stored.write_bytes(garbage)
        assert compute_intensity_stats(catalog.train, 2, (5.0, 95.0), tmp_path / "stats", "fp") == fresh
        assert json.loads(stored.read_text())["lower"] == fresh.lower  # replaced by the recomputed one
