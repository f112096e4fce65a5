"""Crop centres follow the ratio and the positive definition; crops match a brute-force reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from common.sampling import choose_centres, crop, crop_into, fill_outside, sample_crops, take_concatenated
from common.volume import PreparedVolume, class_voxel_indices


def make_volume(shape: tuple[int, int, int] = (40, 36, 32), channels: int = 2, seed: int = 0,
                label: np.ndarray | None = None, num_classes: int = 3) -> PreparedVolume:
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(channels, *shape)).astype(np.float32)
    if label is None:
        label = np.zeros((1, *shape), dtype=np.uint8)
        label[0, 10:20, 8:18, 5:15] = 1
        label[0, 25:30, 20:30, 20:28] = 2
    indices, counts = class_voxel_indices(label, num_classes, image.nbytes)
    return PreparedVolume("v", image, label, indices, counts, np.eye(4), np.eye(4), shape)


def reference_crop(image: np.ndarray, label: np.ndarray, centre, patch) -> tuple[np.ndarray, np.ndarray]:
    """Voxel by voxel: out[i] = src[centre - p//2 + i] if inside else 0."""
    out_i = np.zeros((image.shape[0], *patch), dtype=image.dtype)
    out_l = np.zeros((label.shape[0], *patch), dtype=label.dtype)
    for idx in itertools.product(*(range(p) for p in patch)):
        src = [c - p // 2 + i for c, p, i in zip(centre, patch, idx)]
        if all(0 <= s < n for s, n in zip(src, image.shape[1:])):
            out_i[(slice(None), *idx)] = image[(slice(None), *src)]
            out_l[(slice(None), *idx)] = label[(slice(None), *src)]
    return out_i, out_l


def test_centre_voxel_matches_positive_flag() -> None:
    vol = make_volume()
    centres, positive = choose_centres(vol, 500, 1.0, np.random.default_rng(1))
    assert centres.shape == (500, 3) and positive.shape == (500,)
    centre_labels = vol.label[0][tuple(centres.T)]
    assert np.array_equal(centre_labels > 0, positive)
    assert 0 < positive.sum() < 500


@pytest.mark.parametrize("ratio, expected", [(3.0, 0.75), (1.0, 0.5), (0.25, 0.2)])
def test_ratio_statistics(ratio: float, expected: float) -> None:
    _, positive = choose_centres(make_volume(), 4000, ratio, np.random.default_rng(2))
    assert positive.mean() == pytest.approx(expected, abs=0.03)


def test_no_foreground_gives_all_negative() -> None:
    vol = make_volume(label=np.zeros((1, 40, 36, 32), dtype=np.uint8))
    centres, positive = choose_centres(vol, 50, 10.0, np.random.default_rng(0))
    assert not positive.any() and np.all(vol.label[0][tuple(centres.T)] == 0)


def test_no_background_gives_all_positive() -> None:
    vol = make_volume(label=np.ones((1, 40, 36, 32), dtype=np.uint8), num_classes=2)
    _, positive = choose_centres(vol, 50, 0.1, np.random.default_rng(0))
    assert positive.all()


@pytest.mark.parametrize("centre, patch", [
    ((0, 0, 0), (6, 5, 4)),
    ((39, 35, 31), (6, 5, 4)),
    ((2, 34, 15), (7, 8, 9)),
    ((20, 18, 16), (6, 5, 4)),       # fully inside: fast path
    ((0, 18, 31), (1, 1, 1)),
])
def test_crop_matches_reference(centre, patch) -> None:
    vol = make_volume()
    img, lab = crop(vol.image, vol.label, centre, patch)
    ref_i, ref_l = reference_crop(vol.image, vol.label, centre, patch)
    assert img.shape == (2, *patch) and lab.shape == (1, *patch)
    assert np.array_equal(img, ref_i) and np.array_equal(lab, ref_l)


def test_even_patch_centre_at_half_index() -> None:
    vol = make_volume()
    img, _ = crop(vol.image, vol.label, (20, 18, 16), (4, 4, 4))
    assert img[0, 2, 2, 2] == vol.image[0, 20, 18, 16]


def test_crop_is_writeable_copy_of_read_only_source() -> None:
    vol = make_volume()
    vol.image.setflags(write=False)
    vol.label.setflags(write=False)
    for idx in vol.class_indices:
        idx.setflags(write=False)
    images, labels, _ = sample_crops(vol, 8, 1.0, (16, 16, 16), np.random.default_rng(3))
    images += 1.0
    labels[:] = 0
    assert not np.shares_memory(images, vol.image)
    img, lab = crop(vol.image, vol.label, (1, 1, 1), (8, 8, 8))
    assert img.flags.writeable and lab.flags.writeable


def test_same_seed_same_crops() -> None:
    vol = make_volume()
    a = sample_crops(vol, 6, 2.0, (12, 10, 8), np.random.default_rng(7))
    b = sample_crops(vol, 6, 2.0, (12, 10, 8), np.random.default_rng(7))
    c = sample_crops(vol, 6, 2.0, (12, 10, 8), np.random.default_rng(8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_sample_crops_shapes_and_dtypes() -> None:
    vol = make_volume()
    images, labels, positive = sample_crops(vol, 5, 1.0, (16, 12, 8), np.random.default_rng(0))
    assert images.shape == (5, 2, 16, 12, 8) and images.dtype == np.float32
    assert labels.shape == (5, 1, 16, 12, 8) and labels.dtype == np.uint8
    assert positive.dtype == bool and positive.shape == (5,)
    assert np.array_equal(labels[:, 0, 8, 6, 4] > 0, positive)


@pytest.mark.parametrize("centre", [(20, 18, 16), (1, 34, 30)])
@pytest.mark.parametrize("flip", [(True, False, False), (False, True, True), (True, True, True)])
def test_crop_with_flip_equals_flipped_crop(centre, flip) -> None:
    vol = make_volume()
    img, lab = crop(vol.image, vol.label, centre, (6, 7, 8))
    axes = tuple(1 + a for a, f in enumerate(flip) if f)
    out_i = np.empty_like(img)
    out_l = np.empty_like(lab)
    crop_into(out_i, out_l, vol.image, vol.label, centre, (6, 7, 8), flip=flip)
    assert np.array_equal(out_i, np.flip(img, axes)) and np.array_equal(out_l, np.flip(lab, axes))


def full_fill_crop_into(out_image: np.ndarray, out_label: np.ndarray, image: np.ndarray, label: np.ndarray,
                        centre, patch, pad_value: float) -> None:
    """The earlier border path: fill the whole patch, then copy the overlap (the result to keep)."""
    start = np.asarray(centre) - np.asarray(patch) // 2
    lo, hi = np.maximum(start, 0), np.minimum(start + np.asarray(patch), image.shape[1:])
    out_image.fill(pad_value)
    out_label.fill(0)
    if np.any(hi <= lo):
        return
    src = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    dst = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(lo, hi, start))
    out_image[(slice(None), *dst)] = image[(slice(None), *src)]
    out_label[(slice(None), *dst)] = label[(slice(None), *src)]


@pytest.mark.parametrize("seed", range(6))
def test_border_fill_of_outside_part_only_equals_full_fill(seed: int) -> None:
    """Only the out-of-volume part is filled now; into garbage-filled outputs, the result is the old one."""
    vol = make_volume(shape=(20, 17, 15))
    rng = np.random.default_rng(seed)
    patch = (9, 8, 7)
    for _ in range(40):
        centre = [int(rng.integers(-6, n + 6)) for n in vol.spatial_shape]  # inside, across and beyond borders
        flip = rng.random(3) < 0.5
        out_i = np.full((2, *patch), np.nan, dtype=np.float32)
        out_l = np.full((1, *patch), 255, dtype=np.uint8)
        crop_into(out_i, out_l, vol.image, vol.label, centre, patch, pad_value=-3.0, flip=flip)
        ref_i, ref_l = np.empty_like(out_i), np.empty_like(out_l)
        full_fill_crop_into(ref_i, ref_l, vol.image, vol.label, centre, patch, -3.0)
        axes = tuple(1 + a for a in np.flatnonzero(flip))
        assert np.array_equal(out_i, np.flip(ref_i, axes)) and np.array_equal(out_l, np.flip(ref_l, axes))


def test_fill_outside_writes_the_complement_of_the_box_only() -> None:
    out = np.zeros((2, 6, 5, 4), dtype=np.int32)
    inside = np.zeros(out.shape[1:], dtype=bool)
    inside[1:4, 2:5, 0:3] = True
    fill_outside(out, (1, 2, 0), (4, 5, 3), 7)
    assert np.all(out[:, inside] == 0) and np.all(out[:, ~inside] == 7)


def test_positive_centres_cover_the_union_of_foreground_classes() -> None:
    """Several foreground classes: centres are drawn from the union as if it were concatenated."""
    vol = make_volume()
    rng_a, rng_b = np.random.default_rng(11), np.random.default_rng(11)
    centres, positive = choose_centres(vol, 400, 1e6, rng_a)
    assert positive.all()
    classes = vol.label[0][tuple(centres.T)]
    assert set(np.unique(classes)) == {1, 2}
    # same random numbers, explicit concatenation: identical centres
    fg = np.concatenate(vol.class_indices[1:])
    rng_b.random(400)
    flat = fg[rng_b.integers(0, fg.size, 400)]
    assert np.array_equal(centres, np.stack(np.unravel_index(flat, vol.spatial_shape), axis=1))


def test_take_concatenated_equals_concatenate() -> None:
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 1000, n).astype(np.int32) for n in (5, 1, 17, 3)]
    k = rng.integers(0, 26, 200)
    assert np.array_equal(take_concatenated(parts, k), np.concatenate(parts)[k])
    assert np.array_equal(take_concatenated(parts[:1], k % 5), parts[0][k % 5])
