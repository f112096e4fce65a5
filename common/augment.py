"""Random transforms applied to crops after the cache (they must never be cached).

Every transform here declares ``is_random = True`` so ``common.preprocess.split_chain``
cuts a chain before it. They work on one numpy sample -- image (C, X, Y, Z) float32 and
label (1, X, Y, Z) integer -- and take the ``np.random.Generator`` as an argument, so a
seeded producer gives the same augmentations in the same order on every run.
Intensity transforms modify a writeable input in place (pass a copy to keep it);
``augment_batch`` copies the batch first unless told it may work in place.

Each transform first ``draw``s its random parameters (None when it does not fire) and then
applies them, so another executor -- the device crop path in ``cache_service/sdk/device.py`` --
can take exactly the same draws from the same generator and apply them to tensors on a GPU.

Intensity transforms follow MONAI's definitions: the shift adds an *absolute* offset
drawn from [-shift_offset, shift_offset] (MONAI ``RandShiftIntensity``, which the paper
uses; the cached CT is already scaled to [0, 1] and MRI z-scored, so an absolute offset
has the same meaning on every volume), the scale multiplies by 1 + U(-f, f), and the
contrast applies a gamma to the crop rescaled to its own [min, max] and maps it back.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
from scipy import ndimage

from common.config import AugmentConfig

Sample = tuple[np.ndarray, np.ndarray]


class RandomTransform(Protocol):
    is_random: bool

    def draw(self, rng: np.random.Generator) -> Any: ...

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Sample: ...


def _inplace(op: np.ufunc, image: np.ndarray, value: np.float32) -> np.ndarray:
    """Apply ``op(image, value)`` in place when the array may be written, else into a new array.

    Intensity transforms run in place to avoid allocating a fresh crop-sized array per
    sample (page faults cost as much as the arithmetic); ``augment_batch`` only hands
    them arrays it owns, and read-only inputs are never modified.
    """
    return op(image, value, out=image) if image.flags.writeable else op(image, value)


class RandFlip:
    """Flip image and label together along each spatial axis with probability ``prob``."""

    is_random = True

    def __init__(self, prob: float) -> None:
        self.prob = prob

    def draw(self, rng: np.random.Generator) -> tuple[int, ...] | None:
        """Array axes to mirror (1..3; axis 0 is the channel), or None."""
        axes = tuple(int(1 + a) for a in np.flatnonzero(rng.random(3) < self.prob))
        return axes or None

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Sample:
        axes = self.draw(rng)
        if axes is None:
            return image, label
        return np.flip(image, axes), np.flip(label, axes)


class RandShiftIntensity:
    """Add one absolute offset U(-offset, offset) to every voxel (MONAI RandShiftIntensity)."""

    is_random = True

    def __init__(self, prob: float, offset: float) -> None:
        self.prob, self.offset = prob, offset

    def draw(self, rng: np.random.Generator) -> float | None:
        """The offset, or None."""
        return None if rng.random() >= self.prob else float(rng.uniform(-self.offset, self.offset))

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Sample:
        offset = self.draw(rng)
        return (image, label) if offset is None else (_inplace(np.add, image, np.float32(offset)), label)


class RandScaleIntensity:
    """Multiply intensities by 1 + U(-factor, factor) (MONAI RandScaleIntensity)."""

    is_random = True

    def __init__(self, prob: float, factor: float) -> None:
        self.prob, self.factor = prob, factor

    def draw(self, rng: np.random.Generator) -> float | None:
        """The multiplier 1 + U(-factor, factor), or None."""
        return None if rng.random() >= self.prob else float(1.0 + rng.uniform(-self.factor, self.factor))

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Sample:
        scale = self.draw(rng)
        return (image, label) if scale is None else (_inplace(np.multiply, image, np.float32(scale)), label)


class RandContrast:
    """Gamma on the crop rescaled to [0, 1] by its own min/max, then mapped back (MONAI RandAdjustContrast)."""

    is_random = True

    def __init__(self, prob: float, gamma: tuple[float, float]) -> None:
        self.prob, self.gamma = prob, gamma

    def draw(self, rng: np.random.Generator) -> float | None:
        """The gamma, or None."""
        return None if rng.random() >= self.prob else float(rng.uniform(*self.gamma))

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Sample:
        gamma = self.draw(rng)
        if gamma is None:
            return image, label
        lo, hi = float(image.min()), float(image.max())
        if hi - lo <= 1e-12:  # a flat crop has no contrast to change
            return image, label
        out = _inplace(np.subtract, image, np.float32(lo))
        out /= np.float32(hi - lo)
        np.power(out, np.float32(gamma), out=out)
        out *= np.float32(hi - lo)
        out += np.float32(lo)
        return out, label


def rotation_matrix(angles_rad: np.ndarray) -> np.ndarray:
    """3x3 rotation: successive rotations about axes 0, 1 and 2 of the voxel grid."""
    out = np.eye(3)
    for axis, angle in enumerate(angles_rad):
        c, s = math.cos(angle), math.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        rot = np.eye(3)
        rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
        out = rot @ out
    return out


class RandAffine:
    """Small rotation and scaling about the patch centre; image linear, label nearest (scipy.ndimage).

    Voxels mapped from outside the crop become 0, like the border padding of the crop itself.
    """

    is_random = True

    def __init__(self, prob: float, rotate_deg: float, scale: float) -> None:
        self.prob, self.rotate_deg, self.scale = prob, rotate_deg, scale

    def matrix(self, rng: np.random.Generator) -> np.ndarray:
        """Output-to-input coordinate map (3x3) for one draw."""
        angles = np.deg2rad(rng.uniform(-self.rotate_deg, self.rotate_deg, 3))
        zoom = 1.0 + rng.uniform(-self.scale, self.scale, 3)
        return rotation_matrix(angles) @ np.diag(zoom)

    def draw(self, rng: np.random.Generator) -> np.ndarray | None:
        """The output-to-input matrix, or None."""
        return None if rng.random() >= self.prob else self.matrix(rng)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Sample:
        mat = self.draw(rng)
        if mat is None:
            return image, label
        centre = (np.asarray(image.shape[1:], dtype=np.float64) - 1) / 2
        offset = centre - mat @ centre
        warp = lambda a, order: ndimage.affine_transform(a, mat, offset, order=order, mode="constant", cval=0)  # noqa: E731
        new_image = np.stack([warp(ch, 1) for ch in image]).astype(np.float32)
        new_label = np.stack([warp(ch, 0) for ch in label]).astype(label.dtype)
        return new_image, new_label


def build_transforms(cfg: AugmentConfig) -> list[RandomTransform]:
    """The chain in a fixed order: geometry first (flip, affine), then intensity."""
    return [
        RandFlip(cfg.flip_prob),
        RandAffine(cfg.affine_prob, cfg.affine_rotate_deg, cfg.affine_scale),
        RandContrast(cfg.contrast_prob, cfg.contrast_gamma),
        RandScaleIntensity(cfg.scale_prob, cfg.scale_factor),
        RandShiftIntensity(cfg.shift_prob, cfg.shift_offset),
    ]


def draw_flips(n: int, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) flags: which spatial axes to mirror per crop, for flipping while cropping.

    A producer that flips during the crop copy (``common.sampling.crop_into(flip=...)``)
    then runs ``augment_batch`` with ``without_flip(cfg)``, saving a pass over each crop.
    """
    return rng.random((n, 3)) < cfg.flip_prob


def without_flip(cfg: AugmentConfig) -> AugmentConfig:
    return cfg.replace(flip_prob=0.0)


def augment_sample(image: np.ndarray, label: np.ndarray, transforms: list[RandomTransform],
                   rng: np.random.Generator) -> Sample:
    for transform in transforms:
        image, label = transform(image, label, rng)
    return image, label


def augment_batch(images: np.ndarray, labels: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator,
                  inplace: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Augment each sample of a batch (B, C, *patch) / (B, 1, *patch) independently.

    With ``inplace`` the results are written back into the given arrays, saving a batch
    copy; the producer does this because it owns its freshly cut crops. Otherwise the
    inputs are left untouched.
    """
    out_images = images if inplace else images.copy()
    out_labels = labels if inplace else labels.copy()
    transforms = build_transforms(cfg)
    for i in range(out_images.shape[0]):
        view_image, view_label = out_images[i], out_labels[i]
        image, label = augment_sample(view_image, view_label, transforms, rng)
        if image is not view_image:  # a transform fired: copy its result into the batch slot
            view_image[...] = image
        if label is not view_label:
            view_label[...] = label
    return out_images, out_labels
