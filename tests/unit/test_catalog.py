import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.catalog import fingerprint, load_catalog
from common.config import DataConfig, PreprocessConfig
from common.demo_data import make_demo_data
from common.errors import DataError


def test_split_is_deterministic_and_disjoint(tmp_path):
    make_demo_data(tmp_path, cases=10, size=16)
    a = load_catalog(tmp_path, DataConfig(val_fraction=0.3, split_seed=1))
    b = load_catalog(tmp_path, DataConfig(val_fraction=0.3, split_seed=1))
    c = load_catalog(tmp_path, DataConfig(val_fraction=0.3, split_seed=2))
    assert a == b and len(a.val) == 3 and len(a.train) == 7
    assert not {r.item_id for r in a.train} & {r.item_id for r in a.val}
    assert {r.item_id for r in a.val} != {r.item_id for r in c.val}
    assert a.num_classes == 3 and a.is_ct


def test_explicit_validation_ids(tmp_path):
    make_demo_data(tmp_path, cases=4, size=16)
    cat = load_catalog(tmp_path, DataConfig(val_ids=("demo_002",)))
    assert [r.item_id for r in cat.val] == ["demo_002"] and len(cat.train) == 3


def test_fingerprint_changes_with_config_and_files(tmp_path):
    make_demo_data(tmp_path, cases=3, size=16)
    cat = load_catalog(tmp_path)
    base = fingerprint(cat, PreprocessConfig())
    assert base == fingerprint(load_catalog(tmp_path, DataConfig(val_fraction=0.5)), PreprocessConfig())
    assert base != fingerprint(cat, PreprocessConfig(spacing=(1.5, 1.5, 1.5)))
    st = os.stat(cat.train[0].image)
    os.utime(cat.train[0].image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert base != fingerprint(load_catalog(tmp_path), PreprocessConfig())


def test_demo_data_is_deterministic_non_ras_and_anisotropic(tmp_path):
    make_demo_data(tmp_path / "a", cases=2, size=24, seed=3)
    make_demo_data(tmp_path / "b", cases=2, size=24, seed=3)
    for name in ("imagesTr/demo_000.nii.gz", "labelsTr/demo_001.nii.gz"):
        x, y = nib.load(tmp_path / "a" / name), nib.load(tmp_path / "b" / name)
        assert np.array_equal(x.get_fdata(), y.get_fdata()) and np.allclose(x.affine, y.affine)
    img = nib.load(tmp_path / "a" / "imagesTr/demo_000.nii.gz")
    assert nib.aff2axcodes(img.affine) != ("R", "A", "S")
    zooms = img.header.get_zooms()
    assert max(zooms) / min(zooms) > 1.4
    data = img.get_fdata()
    assert data.min() <= -900 and data.max() >= 100  # air and enhanced tissue in HU
    lab = nib.load(tmp_path / "a" / "labelsTr/demo_000.nii.gz").get_fdata()
    assert set(np.unique(lab)) == {0, 1, 2}


def _with_outside_file(tmp_path: Path, entry: str) -> Path:
    """A dataset whose second case's image is ``entry`` (pointing at a file beside, not inside, the folder)."""
    root = tmp_path / "ds"
    root.mkdir()
    make_demo_data(root, cases=3, size=16)
    meta = json.loads((root / "dataset.json").read_text())
    outside = tmp_path / "outside.nii.gz"
    outside.write_bytes((root / meta["training"][1]["image"]).read_bytes())
    meta["training"][1]["image"] = entry.format(outside=outside)
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize("entry", ["../outside.nii.gz", "./imagesTr/../../outside.nii.gz", "{outside}"])
def test_paths_outside_the_dataset_folder_are_refused(tmp_path: Path, entry: str) -> None:
    root = _with_outside_file(tmp_path, entry)
    with pytest.raises(DataError, match=r"training\[1\]\.image .* outside the dataset folder") as info:
        load_catalog(root)
    assert info.value.path.endswith("dataset.json") and "data.allow_outside_paths" in str(info.value)
    allowed = load_catalog(root, DataConfig(allow_outside_paths=True))
    assert str(tmp_path / "outside.nii.gz") in {r.image for r in allowed.train + allowed.val}
    by_keyword = load_catalog(root, allow_outside_paths=True)  # the loader's keyword overrides the config
    assert by_keyword.train + by_keyword.val == allowed.train + allowed.val


def test_symlink_resolving_outside_is_refused_inside_is_kept(tmp_path: Path) -> None:
    root = _with_outside_file(tmp_path, "./imagesTr/link.nii.gz")
    (root / "imagesTr" / "link.nii.gz").symlink_to(tmp_path / "outside.nii.gz")
    with pytest.raises(DataError, match="resolves to .*outside.nii.gz, outside the dataset folder"):
        load_catalog(root)
    (root / "store").mkdir()
    (tmp_path / "outside.nii.gz").rename(root / "store" / "kept.nii.gz")
    (root / "imagesTr" / "link.nii.gz").unlink()
    (root / "imagesTr" / "link.nii.gz").symlink_to(root / "store" / "kept.nii.gz")
    cat = load_catalog(root)
    assert str(root.resolve() / "store" / "kept.nii.gz") in {r.image for r in cat.train + cat.val}
