"""Random transforms after the cache: aligned, reproducible, and inert when switched off."""

from __future__ import annotations

import numpy as np
import pytest

from common.augment import (RandAffine, RandContrast, RandFlip, RandScaleIntensity, RandShiftIntensity,
                            augment_batch, build_transforms, draw_flips, rotation_matrix,
                            without_flip)
from common.config import AugmentConfig
from common.preprocess import is_random

OFF = AugmentConfig(flip_prob=0.0, shift_prob=0.0, contrast_prob=0.0, scale_prob=0.0, affine_prob=0.0)
ALL = AugmentConfig(flip_prob=0.5, shift_prob=1.0, contrast_prob=1.0, scale_prob=1.0, affine_prob=1.0)


def _batch(b: int = 3, shape: tuple[int, int, int] = (12, 10, 8)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.random((b, 2, *shape)).astype(np.float32)
    labels = rng.integers(0, 3, (b, 1, *shape)).astype(np.uint8)
    return images, labels


def test_every_transform_declares_random() -> None:
    assert all(is_random(t) for t in build_transforms(AugmentConfig()))


def test_flip_keeps_image_and_label_aligned() -> None:
    rng = np.random.default_rng(1)
    # image encodes the label exactly, so any misalignment shows up
    labels = rng.integers(0, 3, (4, 1, 7, 6, 5)).astype(np.uint8)
    images = np.concatenate([labels, labels * 10], axis=1).astype(np.float32)
    cfg = AugmentConfig(flip_prob=0.5, shift_prob=0.0)
    out_i, out_l = augment_batch(images, labels, cfg, rng)
    assert np.array_equal(out_i[:, :1], out_l.astype(np.float32))
    assert np.array_equal(out_i[:, 1:], out_l.astype(np.float32) * 10)
    assert not np.array_equal(out_l, labels)  # some flip happened


def test_flip_all_axes() -> None:
    image = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    out, _ = RandFlip(1.0)(image, image.astype(np.uint8), np.random.default_rng(0))
    assert np.array_equal(out, image[:, ::-1, ::-1, ::-1])


def test_all_probabilities_zero_leaves_batch_unchanged() -> None:
    images, labels = _batch()
    out_i, out_l = augment_batch(images, labels, OFF, np.random.default_rng(0))
    assert np.array_equal(out_i, images) and np.array_equal(out_l, labels)


def test_same_seed_same_output_and_inputs_untouched() -> None:
    images, labels = _batch()
    keep_i, keep_l = images.copy(), labels.copy()
    a = augment_batch(images, labels, ALL, np.random.default_rng(5))
    b = augment_batch(images, labels, ALL, np.random.default_rng(5))
    c = augment_batch(images, labels, ALL, np.random.default_rng(6))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert np.array_equal(images, keep_i) and np.array_equal(labels, keep_l)
    assert a[0].dtype == np.float32 and a[1].dtype == np.uint8


def test_inplace_writes_into_given_arrays() -> None:
    images, labels = _batch()
    expected = augment_batch(images, labels, ALL, np.random.default_rng(2))
    out_i, out_l = augment_batch(images, labels, ALL, np.random.default_rng(2), inplace=True)
    assert out_i is images and out_l is labels
    assert np.array_equal(images, expected[0]) and np.array_equal(labels, expected[1])


def test_affine_keeps_label_values_in_class_set() -> None:
    images, labels = _batch(2, (16, 16, 16))
    aff = RandAffine(1.0, rotate_deg=30.0, scale=0.2)
    img, lab = aff(images[0], labels[0], np.random.default_rng(3))
    assert set(np.unique(lab)) <= set(np.unique(labels[0])) | {0}
    assert lab.dtype == np.uint8 and img.dtype == np.float32 and img.shape == images[0].shape


def test_affine_identity_when_ranges_are_zero() -> None:
    images, labels = _batch(1, (9, 9, 9))
    img, lab = RandAffine(1.0, 0.0, 0.0)(images[0], labels[0], np.random.default_rng(0))
    assert np.allclose(img, images[0], atol=1e-5) and np.array_equal(lab, labels[0])


def test_rotation_matrix_is_orthonormal() -> None:
    rot = rotation_matrix(np.array([0.1, -0.2, 0.3]))
    assert np.allclose(rot @ rot.T, np.eye(3)) and np.isclose(np.linalg.det(rot), 1.0)


def test_shift_is_absolute_offset() -> None:
    image = np.full((1, 2, 2, 2), 5.0, dtype=np.float32)
    out, _ = RandShiftIntensity(1.0, 0.1)(image.copy(), image, np.random.default_rng(0))
    delta = np.unique(out - image)
    assert delta.size == 1 and abs(delta[0]) <= 0.1 + 1e-6 and delta[0] != 0


def test_scale_multiplies() -> None:
    image = np.full((1, 2, 2, 2), 2.0, dtype=np.float32)
    out, _ = RandScaleIntensity(1.0, 0.1)(image.copy(), image, np.random.default_rng(0))
    factor = np.unique(out / image)
    assert factor.size == 1 and 0.9 <= factor[0] <= 1.1


def test_contrast_keeps_min_max_and_order() -> None:
    image = np.linspace(-1, 3, 27, dtype=np.float32).reshape(1, 3, 3, 3)
    out, _ = RandContrast(1.0, (2.0, 2.0))(image.copy(), image, np.random.default_rng(0))
    assert out.min() == pytest.approx(-1) and out.max() == pytest.approx(3)
    assert np.all(np.diff(out.ravel()) >= 0)
    assert out.ravel()[13] == pytest.approx(-1 + 4 * 0.5 ** 2)


def test_contrast_flat_crop_unchanged() -> None:
    image = np.ones((1, 2, 2, 2), dtype=np.float32)
    out, _ = RandContrast(1.0, (0.5, 2.0))(image, image, np.random.default_rng(0))
    assert np.array_equal(out, image)


def test_read_only_input_is_not_modified() -> None:
    image = np.linspace(0, 1, 8, dtype=np.float32).reshape(1, 2, 2, 2)
    keep = image.copy()
    image.setflags(write=False)
    for t in (RandShiftIntensity(1.0, 0.1), RandScaleIntensity(1.0, 0.1), RandContrast(1.0, (2.0, 2.0))):
        out, _ = t(image, image, np.random.default_rng(0))
        assert out is not image
    assert np.array_equal(image, keep)


def test_draw_flips_and_without_flip() -> None:
    flips = draw_flips(4000, AugmentConfig(flip_prob=0.25), np.random.default_rng(0))
    assert flips.shape == (4000, 3) and abs(flips.mean() - 0.25) < 0.03
    assert without_flip(ALL).flip_prob == 0.0 and without_flip(ALL).shift_prob == ALL.shift_prob
