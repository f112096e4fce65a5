"""Crop-centre selection and crop copies on a prepared volume.

A positive crop is one whose centre voxel is foreground (DESIGN.md), so centres come
straight from the cached per-class voxel indices and are never moved to fit the patch
inside the volume; a patch that crosses the border is padded instead. Crops are copies
because the cached arrays are read-only views into the Ray object store.

Padding value: 0 for the image (and 0 = background for the label). Both normalisations
of the cached prefix map "outside the body" to 0 -- CT is clipped and scaled to [0, 1] so
air is 0, and MRI is z-scored over non-zero voxels only, leaving the zero background at
0 -- and a constant avoids scanning the whole volume for its minimum on every border crop.
This matches MONAI's ``SpatialPad`` default (constant 0). Pass ``pad_value`` to change it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from common.ratio import pos_fraction
from common.volume import PreparedVolume

Centre = Sequence[int] | np.ndarray


def take_concatenated(parts: Sequence[np.ndarray], k: np.ndarray) -> np.ndarray:
    """``np.concatenate(parts)[k]`` without building the concatenation.

    The foreground of a multi-class label is the union of its per-class index arrays, which
    together may be millions of entries; concatenating them for every crop draw cost more
    than the draw. Looking each position up in its own part gives the same values.
    """
    if len(parts) == 1:
        return parts[0][k]
    offsets = np.cumsum([0, *(p.size for p in parts)])
    which = np.searchsorted(offsets, k, side="right") - 1
    out = np.empty(k.shape, dtype=np.result_type(*parts))
    for j, part in enumerate(parts):
        hit = which == j
        if hit.any():
            out[hit] = part[k[hit] - offsets[j]]
    return out


def choose_centres(volume: PreparedVolume, n: int, ratio: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` crop centres (n, 3) and whether each is positive, each positive with probability r/(1+r).

    A volume without foreground can only give negatives, one without background only
    positives; the draw still consumes the same random numbers so streams stay aligned.
    Positive centres are drawn uniformly from the union of the foreground classes' indices.
    """
    fg = [i for i in volume.class_indices[1:] if i.size]
    n_fg, bg = sum(i.size for i in fg), volume.background_indices()
    if n_fg == 0 and bg.size == 0:
        raise ValueError(f"volume {volume.item_id!r} has no voxel indices to draw crop centres from")
    positive = rng.random(n) < pos_fraction(ratio)
    if n_fg == 0:
        positive[:] = False
    elif bg.size == 0:
        positive[:] = True
    flat = np.empty(n, dtype=np.int64)
    n_pos = int(positive.sum())
    if n_pos:
        flat[positive] = take_concatenated(fg, rng.integers(0, n_fg, n_pos))
    if n - n_pos:
        flat[~positive] = bg[rng.integers(0, bg.size, n - n_pos)]
    centres = np.stack(np.unravel_index(flat, volume.spatial_shape), axis=1).astype(np.int64)
    return centres.reshape(n, 3), positive


def _bounds(centre: Centre, patch_size: Sequence[int]) -> tuple[list[int], list[int]]:
    """Patch start/stop in volume coordinates; the centre sits at index p // 2 of the patch.

    Plain ints: this runs once per crop, and numpy calls on 3-element arrays cost more than the
    arithmetic.
    """
    start = [int(c) - int(p) // 2 for c, p in zip(centre, patch_size)]
    return start, [s + int(p) for s, p in zip(start, patch_size)]


def fill_outside(out: np.ndarray, lo: Sequence[int], hi: Sequence[int], value: float) -> None:
    """Set every voxel of ``out`` (C, X, Y, Z) outside the box [lo, hi) to ``value``.

    The complement of a box is cut into disjoint slabs, axis by axis (each later axis only
    within the earlier axes' box range), so each voxel is written once and the part that the
    crop copy overwrites anyway is never filled: a border crop costs its out-of-volume share,
    not a fill of the whole patch.
    """
    inner: list[slice] = [slice(None)] * 3
    for axis in range(3):
        for part in (slice(0, lo[axis]), slice(hi[axis], out.shape[1 + axis])):
            if part.stop > part.start:
                index = list(inner)
                index[axis] = part
                out[(slice(None), *index)] = value
        inner[axis] = slice(lo[axis], hi[axis])


def crop_into(out_image: np.ndarray, out_label: np.ndarray, image: np.ndarray, label: np.ndarray,
              centre: Centre, patch_size: Sequence[int], pad_value: float = 0.0,
              flip: Sequence[bool] | None = None) -> None:
    """Copy the patch around ``centre`` into preallocated outputs (no intermediate arrays).

    Inside the volume this is one strided slice copy per array; across the border only
    the overlapping part is copied and only the rest filled with ``pad_value`` / 0, so
    the outputs may hold anything beforehand. ``flip`` (one flag per spatial axis) writes
    the patch mirrored along those axes at no extra cost, so a random flip needs no
    second pass over the crop.
    """
    if flip is not None and any(flip):
        mirror = (slice(None), *(slice(None, None, -1) if f else slice(None) for f in flip))
        out_image, out_label = out_image[mirror], out_label[mirror]
    spatial = image.shape[1:]
    start, stop = _bounds(centre, patch_size)
    lo = [max(a, 0) for a in start]
    hi = [min(b, n) for b, n in zip(stop, spatial)]
    if lo == start and hi == stop:
        src = tuple(slice(a, b) for a, b in zip(start, stop))
        np.copyto(out_image, image[(slice(None), *src)])
        np.copyto(out_label, label[(slice(None), *src)])
        return
    if any(b <= a for a, b in zip(lo, hi)):  # patch entirely outside (only for centres outside the volume)
        out_image.fill(pad_value)
        out_label.fill(0)
        return
    dst_lo = [a - s for a, s in zip(lo, start)]
    dst_hi = [b - s for b, s in zip(hi, start)]
    fill_outside(out_image, dst_lo, dst_hi, pad_value)
    fill_outside(out_label, dst_lo, dst_hi, 0)
    src = tuple(slice(a, b) for a, b in zip(lo, hi))
    dst = tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi))
    np.copyto(out_image[(slice(None), *dst)], image[(slice(None), *src)])
    np.copyto(out_label[(slice(None), *dst)], label[(slice(None), *src)])


def crop(image: np.ndarray, label: np.ndarray, centre: Centre, patch_size: Sequence[int],
         pad_value: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A fresh (writeable) copy of the image and label patch centred on ``centre``."""
    patch = tuple(int(p) for p in patch_size)
    out_image = np.empty((image.shape[0], *patch), dtype=image.dtype)
    out_label = np.empty((label.shape[0], *patch), dtype=label.dtype)
    crop_into(out_image, out_label, image, label, centre, patch, pad_value)
    return out_image, out_label


def sample_crops(volume: PreparedVolume, n: int, ratio: float, patch_size: Sequence[int],
                 rng: np.random.Generator, pad_value: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` crops of one volume: images (n, C, *patch) float32, labels (n, 1, *patch) uint8, positive flags.

    Crops are written straight into the stacked output, so each voxel is copied once.
    """
    patch = tuple(int(p) for p in patch_size)
    centres, positive = choose_centres(volume, n, ratio, rng)
    images = np.empty((n, volume.image.shape[0], *patch), dtype=np.float32)
    labels = np.empty((n, volume.label.shape[0], *patch), dtype=np.uint8)
    for i, centre in enumerate(centres):
        crop_into(images[i], labels[i], volume.image, volume.label, centre, patch, pad_value)
    return images, labels, positive
