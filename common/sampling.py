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


def choose_centres(volume: PreparedVolume, n: int, ratio: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` crop centres (n, 3) and whether each is positive, each positive with probability r/(1+r).

    A volume without foreground can only give negatives, one without background only
    positives; the draw still consumes the same random numbers so streams stay aligned.
    """
    fg, bg = volume.foreground_indices(), volume.background_indices()
    if fg.size == 0 and bg.size == 0:
        raise ValueError(f"volume {volume.item_id!r} has no voxel indices to draw crop centres from")
    positive = rng.random(n) < pos_fraction(ratio)
    if fg.size == 0:
        positive[:] = False
    elif bg.size == 0:
        positive[:] = True
    flat = np.empty(n, dtype=np.int64)
    n_pos = int(positive.sum())
    if n_pos:
        flat[positive] = fg[rng.integers(0, fg.size, n_pos)]
    if n - n_pos:
        flat[~positive] = bg[rng.integers(0, bg.size, n - n_pos)]
    centres = np.stack(np.unravel_index(flat, volume.spatial_shape), axis=1).astype(np.int64)
    return centres.reshape(n, 3), positive


def _bounds(centre: Centre, patch_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Patch start/stop in volume coordinates; the centre sits at index p // 2 of the patch."""
    start = np.asarray(centre, dtype=np.int64) - np.asarray(patch_size, dtype=np.int64) // 2
    return start, start + np.asarray(patch_size, dtype=np.int64)


def crop_into(out_image: np.ndarray, out_label: np.ndarray, image: np.ndarray, label: np.ndarray,
              centre: Centre, patch_size: Sequence[int], pad_value: float = 0.0,
              flip: Sequence[bool] | None = None) -> None:
    """Copy the patch around ``centre`` into preallocated outputs (no intermediate arrays).

    Inside the volume this is one strided slice copy per array; across the border only
    the overlapping part is copied and the rest filled with ``pad_value`` / 0. ``flip``
    (one flag per spatial axis) writes the patch mirrored along those axes at no extra
    cost, so a random flip needs no second pass over the crop.
    """
    if flip is not None and any(flip):
        mirror = (slice(None), *(slice(None, None, -1) if f else slice(None) for f in flip))
        out_image, out_label = out_image[mirror], out_label[mirror]
    spatial = image.shape[1:]
    start, stop = _bounds(centre, patch_size)
    if np.all(start >= 0) and np.all(stop <= spatial):
        src = tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
        np.copyto(out_image, image[(slice(None), *src)])
        np.copyto(out_label, label[(slice(None), *src)])
        return
    lo = np.maximum(start, 0)
    hi = np.minimum(stop, spatial)
    out_image.fill(pad_value)
    out_label.fill(0)
    if np.any(hi <= lo):
        return  # patch entirely outside (only for centres outside the volume)
    src = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    dst = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(lo, hi, start))
    out_image[(slice(None), *dst)] = image[(slice(None), *src)]
    out_label[(slice(None), *dst)] = label[(slice(None), *src)]


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
