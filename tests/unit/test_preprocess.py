"""The deterministic chain puts every object at the right voxels of the 1 mm RAS output."""

from pathlib import Path

import numpy as np
import pytest
from monai.transforms import Compose, RandFlipd, ScaleIntensityd

from common.catalog import load_catalog
from common.config import PreprocessConfig, load_config
from common.preprocess import Preprocessor, build_preprocessor, compute_intensity_stats, split_chain
from common.volume import INDEX_BYTE_SHARE


def _oblique_case(make_case, make_dataset, root: Path, modality: str = "MRI"):
    """A 40x30x20 grid, spacing (2, 1.5, 3) mm, axes permuted and flipped (PIL-like), box at known mm."""
    spacing = np.array([2.0, 1.5, 3.0])
    # voxel axis 0 -> world -y (P), axis 1 -> world -z (I), axis 2 -> world -x (L)
    direction = np.array([[0, 0, -1], [-1, 0, 0], [0, -1, 0]], dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing
    affine[:3, 3] = [25.0, 30.0, 20.0]
    shape = (40, 30, 20)
    ijk = np.indices(shape).reshape(3, -1)
    xyz = (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape((3, *shape))
    inside = (np.abs(xyz[0] - 5) < 12) & (np.abs(xyz[1] - 0) < 15) & (np.abs(xyz[2] - 2) < 10)
    image = np.where(inside, 200.0, 10.0).astype(np.float32)
    label = inside.astype(np.uint8)
    item = make_case(root, "box", image, label, affine)
    make_dataset(root, [item, make_case(root, "box2", image, label, affine)], modality=modality)
    return load_catalog(root, load_config(None, ["data.val_fraction=0"]).data)


def test_object_lands_at_right_world_voxels(tmp_path, make_case, make_dataset):
    catalog = _oblique_case(make_case, make_dataset, tmp_path)
    prep = Preprocessor(PreprocessConfig(normalization="none"), 2, "none", None)
    vol = prep(catalog.train[0])
    assert vol.image.shape[0] == 1 and vol.label.shape == (1, *vol.image.shape[1:])
    # output is 1 mm RAS: the affine is diagonal and positive
    np.testing.assert_allclose(vol.affine[:3, :3], np.eye(3), atol=1e-4)
    xyz = (vol.affine[:3, :3] @ np.indices(vol.spatial_shape).reshape(3, -1) + vol.affine[:3, 3:4])
    xyz = xyz.reshape((3, *vol.spatial_shape))
    deep_in = (np.abs(xyz[0] - 5) < 9) & (np.abs(xyz[1]) < 12) & (np.abs(xyz[2] - 2) < 6.5)
    far_out = (np.abs(xyz[0] - 5) > 15) | (np.abs(xyz[1]) > 18) | (np.abs(xyz[2] - 2) > 14)
    assert deep_in.sum() > 1000 and far_out.sum() > 1000
    assert (vol.label[0][deep_in] == 1).all() and (vol.label[0][far_out] == 0).all()
    assert np.allclose(vol.image[0][deep_in], 200.0, atol=1e-3)
    assert np.allclose(vol.image[0][far_out], 10.0, atol=1e-3)
    # the source grid covered 80 x 45 x 60 mm, so the 1 mm output is that big in RAS order
    assert vol.spatial_shape == (60, 80, 45) or np.allclose(vol.spatial_shape, (60, 80, 45), atol=2)


def test_ct_normalisation_uses_dataset_percentiles(tmp_path, make_case, make_dataset):
    catalog = _oblique_case(make_case, make_dataset, tmp_path, modality="CT")
    cfg = PreprocessConfig()
    prep = build_preprocessor(catalog, cfg, None, tmp_path / "stats", "fp123")
    assert prep.norm == "ct" and prep.stats is not None
    assert (tmp_path / "stats" / "fp123.intensity.json").is_file()
    vol = prep(catalog.train[0])
    assert vol.image.min() >= 0.0 and vol.image.max() <= 1.0
    # stored statistics are reused rather than recomputed
    again = compute_intensity_stats([], 2, (5.0, 95.0), tmp_path / "stats", "fp123")
    assert again == prep.stats


def test_mri_zscore_over_nonzero(tmp_path, make_case, make_dataset):
    catalog = _oblique_case(make_case, make_dataset, tmp_path, modality="MRI")
    vol = build_preprocessor(catalog, PreprocessConfig(clip_percentiles=(1.0, 99.0)), None)(catalog.train[0])
    nz = vol.image[vol.image != 0]
    assert abs(float(nz.mean())) < 0.05 and abs(float(nz.std()) - 1.0) < 0.05


def test_indices_stay_within_budget_and_cover_classes(tmp_path, make_case, make_dataset):
    catalog = _oblique_case(make_case, make_dataset, tmp_path)
    vol = Preprocessor(PreprocessConfig(normalization="none"), 2, "none", None)(catalog.train[0])
    index_bytes = sum(i.nbytes for i in vol.class_indices)
    assert index_bytes <= INDEX_BYTE_SHARE * vol.image.nbytes
    flat = vol.label.reshape(-1)
    for c, idx in enumerate(vol.class_indices):
        assert idx.size > 0 and (flat[idx] == c).all()
    assert vol.class_counts[1] == int((flat == 1).sum())


def test_split_chain_at_first_random_transform():
    class Own:
        is_random = True

        def __call__(self, d):
            return d

    det = ScaleIntensityd(keys="image")
    prefix, suffix = split_chain(Compose([det, RandFlipd(keys="image", prob=0.5), det]))
    assert len(prefix.transforms) == 1 and len(suffix.transforms) == 2
    prefix, suffix = split_chain([det, Own(), det])
    assert len(prefix.transforms) == 1 and isinstance(suffix.transforms[0], Own)
    prefix, suffix = split_chain([det, det])
    assert len(prefix.transforms) == 2 and len(suffix.transforms) == 0


def test_user_compose_prefix_runs_as_preprocessor(tmp_path, make_case, make_dataset):
    from common.nifti import LoadCheckedPaird
    catalog = _oblique_case(make_case, make_dataset, tmp_path)
    prefix, _ = split_chain(Compose([LoadCheckedPaird(2), ScaleIntensityd(keys="image"),
                                     RandFlipd(keys=["image", "label"], prob=1.0)]))
    vol = Preprocessor(PreprocessConfig(), 2, "none", None, chain=prefix)(catalog.train[0])
    assert vol.image.max() == pytest.approx(1.0)
