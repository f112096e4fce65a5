"""Every malformed input is a real file here, and each gets an error naming it and the problem."""

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest

from common.catalog import load_catalog
from common.config import DataConfig, PreprocessConfig
from common.errors import DataError
from common.preprocess import Preprocessor

AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])


def _good(make_case, root: Path, name: str = "a", shape=(24, 24, 16)):
    image = np.random.default_rng(0).normal(0, 100, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[8:16, 8:16, 4:10] = 1
    return make_case(root, name, image, label, AFFINE), image, label


def _prep(patch=None) -> Preprocessor:
    return Preprocessor(PreprocessConfig(normalization="mri"), 2, "mri", None, patch)


def _catalog(root, make_dataset, items):
    make_dataset(root, items, modality="MRI")
    return load_catalog(root, DataConfig(val_fraction=0.0))


def test_missing_file_named_by_catalog(tmp_path, make_case, make_dataset):
    item, _, _ = _good(make_case, tmp_path)
    (tmp_path / item["label"]).unlink()
    with pytest.raises(DataError) as info:
        _catalog(tmp_path, make_dataset, [item])
    assert "a.nii.gz" in info.value.path and "does not exist" in str(info.value)


def test_missing_file_at_preprocessing_time(tmp_path, make_case, make_dataset):
    item, _, _ = _good(make_case, tmp_path)
    rec = _catalog(tmp_path, make_dataset, [item, _good(make_case, tmp_path, "b")[0]]).train[0]
    Path(rec.image).unlink()
    with pytest.raises(DataError, match="does not exist") as info:
        _prep()(rec)
    assert info.value.path == rec.image


def test_unreadable_nifti(tmp_path, make_case, make_dataset):
    item, _, _ = _good(make_case, tmp_path)
    rec = _catalog(tmp_path, make_dataset, [item]).train[0]
    Path(rec.image).write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    with pytest.raises(DataError, match="not a readable NIfTI") as info:
        _prep()(rec)
    assert info.value.path == rec.image


def test_truncated_nifti(tmp_path, make_case, make_dataset):
    item, _, _ = _good(make_case, tmp_path)
    rec = _catalog(tmp_path, make_dataset, [item]).train[0]
    data = Path(rec.image).read_bytes()
    Path(rec.image).write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt") as info:
        _prep()(rec)
    assert info.value.path == rec.image


def test_shape_mismatch(tmp_path, make_case, make_dataset):
    image = np.zeros((24, 24, 16), np.float32)
    item = make_case(tmp_path, "a", image, np.zeros((24, 24, 15), np.uint8), AFFINE)
    rec = _catalog(tmp_path, make_dataset, [item]).train[0]
    with pytest.raises(DataError, match="does not match image shape") as info:
        _prep()(rec)
    assert info.value.path == rec.label


def test_affine_mismatch(tmp_path, make_case, make_dataset):
    image = np.zeros((24, 24, 16), np.float32)
    shifted = AFFINE.copy()
    shifted[0, 3] = 5.0
    item = make_case(tmp_path, "a", image, np.zeros((24, 24, 16), np.uint8), AFFINE, label_affine=shifted)
    rec = _catalog(tmp_path, make_dataset, [item]).train[0]
    with pytest.raises(DataError, match="affine differs") as info:
        _prep()(rec)
    assert info.value.path == rec.label


def test_label_values_outside_declared_classes(tmp_path, make_case, make_dataset):
    label = np.zeros((24, 24, 16), np.uint8)
    label[1, 1, 1] = 3
    item = make_case(tmp_path, "a", np.zeros((24, 24, 16), np.float32), label, AFFINE)
    rec = _catalog(tmp_path, make_dataset, [item]).train[0]
    with pytest.raises(DataError, match=r"label values \[3\] are outside the declared classes 0..1") as info:
        _prep()(rec)
    assert info.value.path == rec.label


@pytest.mark.parametrize("dtype, bad, shown", [(np.int16, -1, "[-1]"), (np.float32, 0.5, "[0.5]"),
                                               (np.float32, np.nan, "[nan]"), (np.int32, 7, "[7]")])
def test_label_values_checked_in_the_files_own_type(tmp_path, make_case, make_dataset, dtype, bad, shown):
    """Signed, float and wide labels are checked as stored (the check no longer converts to float first)."""
    label = np.zeros((24, 24, 16), dtype)
    label[2:5, 2:5, 2:5] = 1
    label[1, 1, 1] = bad
    item = make_case(tmp_path, "a", np.zeros((24, 24, 16), np.float32), label, AFFINE)
    rec = _catalog(tmp_path, make_dataset, [item]).train[0]
    with pytest.raises(DataError, match=rf"label values {re.escape(shown)} are outside") as info:
        _prep()(rec)
    assert info.value.path == rec.label


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.int32])
def test_integral_labels_of_any_stored_type_prepare_alike(tmp_path, make_case, make_dataset, dtype):
    image = np.random.default_rng(1).integers(-1000, 1000, (24, 24, 16)).astype(np.int16)
    label = np.zeros((24, 24, 16), np.uint8)
    label[8:16, 8:16, 4:10] = 1
    items = [make_case(tmp_path, "a", image, label, AFFINE),
             make_case(tmp_path, "b", image, label.astype(dtype), AFFINE)]
    reference, other = (_prep()(rec) for rec in _catalog(tmp_path, make_dataset, items).train)
    assert other.label.dtype == np.uint8 and int(other.label.sum()) > 0
    np.testing.assert_array_equal(other.label, reference.label)
    np.testing.assert_array_equal(other.image, reference.image)


def test_nan_intensities(tmp_path, make_case, make_dataset):
    image = np.zeros((24, 24, 16), np.float32)
    image[3, 4, 5] = np.nan
    item = make_case(tmp_path, "a", image, np.zeros((24, 24, 16), np.uint8), AFFINE)
    rec = _catalog(tmp_path, make_dataset, [item]).train[0]
    with pytest.raises(DataError, match="1 voxel.*NaN") as info:
        _prep()(rec)
    assert info.value.path == rec.image


def test_volume_smaller_than_patch_is_each_consumers_check(tmp_path, make_case, make_dataset):
    item, _, _ = _good(make_case, tmp_path)
    rec = _catalog(tmp_path, make_dataset, [item]).train[0]
    vol = _prep()(rec)  # the shared cache prepares it without knowing any patch size
    vol.require_fits((16, 16, 16))  # an experiment with small patches uses it
    with pytest.raises(DataError, match="smaller than this experiment's patch") as info:
        vol.require_fits((64, 64, 64))  # one with large patches gets an error naming the file
    assert info.value.path == rec.image
    with pytest.raises(DataError, match="smaller than this experiment's patch"):
        _prep(patch=(64, 64, 64))(rec)  # the no-cache baseline checks while it prepares


@pytest.mark.parametrize("drop", ["labels", "modality", "training"])
def test_dataset_json_missing_keys(tmp_path, make_case, make_dataset, drop):
    item, _, _ = _good(make_case, tmp_path)
    make_dataset(tmp_path, [item])
    meta = json.loads((tmp_path / "dataset.json").read_text())
    del meta[drop]
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=f"missing required field.*{drop}") as info:
        load_catalog(tmp_path)
    assert info.value.path.endswith("dataset.json")


def test_dataset_json_not_json_and_entry_without_label(tmp_path, make_case, make_dataset):
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_catalog(tmp_path)
    item, _, _ = _good(make_case, tmp_path)
    make_dataset(tmp_path, [{"image": item["image"]}])
    with pytest.raises(DataError, match=r"training\[0\] must have keys"):
        load_catalog(tmp_path)


def test_data_error_survives_pickling():
    import pickle
    err = pickle.loads(pickle.dumps(DataError("/x/y.nii.gz", "truncated")))
    assert err.path == "/x/y.nii.gz" and str(err) == "/x/y.nii.gz: truncated"
