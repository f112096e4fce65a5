import json

import nibabel as nib
import numpy as np
import pytest

from common.ct_phantom import CtProfile, ct_case
from common.demo_data import make_demo_data
from common.errors import ConfigError
from trainer.cli import build_parser

TINY = CtProfile(slices=(8, 16), z_extent_mm=(40.0, 60.0))  # full 512^2 slices, few of them


def test_ct_profile_writes_int16_hu_with_ct_spacing_and_both_classes(tmp_path):
    out = make_demo_data(tmp_path, cases=3, profile="ct", ct=TINY, seed=1)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 3 and meta["modality"] == {"0": "CT"}
    for item in meta["training"]:
        assert item["image"].endswith(".nii.gz")
        img, lab = nib.load(out / item["image"]), nib.load(out / item["label"])
        assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
        assert img.shape[:2] == (512, 512) and 8 <= img.shape[2] <= 16
        inplane, thick = img.header.get_zooms()[0], img.header.get_zooms()[2]
        assert 0.6 <= inplane <= 0.9 and 1.5 <= thick <= 5.0
        assert np.allclose(img.affine, lab.affine)
        hu, label = np.asarray(img.dataobj), np.asarray(lab.dataobj)
        assert set(np.unique(label)) == {0, 1, 2}
        assert hu.min() < -900  # air around the body
        organ = hu[label == 1].mean()
        assert 40 < organ < 90 and hu[label == 2].mean() < organ - 20  # hypodense lesion in a ~60 HU organ


def test_full_size_ct_geometry_is_in_the_profile_ranges():
    # only the geometry at full size (512^2 x 80-200): building the voxels is what the CLI does
    from common.ct_phantom import ct_geometry

    for i in range(20):
        affine, shape = ct_geometry(np.random.default_rng([0, i]), CtProfile())
        assert shape[:2] == (512, 512) and 80 <= shape[2] <= 200
        assert 0.6 <= -affine[0, 0] <= 0.9 and 1.5 <= affine[2, 2] <= 5.0


def test_ct_case_is_deterministic_per_seed():
    a = ct_case(np.random.default_rng([3, 0]), TINY)
    b = ct_case(np.random.default_rng([3, 0]), TINY)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_unknown_profile_names_the_choices(tmp_path):
    with pytest.raises(ConfigError, match="phantom, ct"):
        make_demo_data(tmp_path, profile="mri")


def test_cli_make_demo_data_defaults_to_40_ct_cases():
    args = build_parser().parse_args(["make-demo-data", "out", "--profile", "ct"])
    assert args.profile == "ct" and args.cases is None  # None: the profile's default, 40 for ct
    from common.demo_data import DEFAULT_CASES

    assert DEFAULT_CASES["ct"] == 40
