"""The unit the cache stores: one preprocessed volume plus what makes cropping cheap.

A :class:`PreparedVolume` holds only numpy arrays and plain values, so the Ray object
store keeps its arrays out of band and ``ray.get`` returns read-only views into shared
memory instead of copies. The per-class voxel indices let a sampler pick a positive or
negative crop centre in O(1) instead of scanning the label for every crop.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from common.patch_fit import require_patch_fits

#: the index arrays together may use at most this share of the image's own bytes
INDEX_BYTE_SHARE = 0.25


@dataclass
class PreparedVolume:
    """Output of the deterministic prefix for one case (image and label on one grid)."""

    item_id: str
    image: np.ndarray  # float32, (C, X, Y, Z), target orientation and spacing
    label: np.ndarray  # uint8, (1, X, Y, Z); 0 is background
    class_indices: tuple[np.ndarray, ...]  # per class c: flat voxel indices with label == c (maybe subsampled)
    class_counts: tuple[int, ...]  # per class: how many voxels the label really has
    affine: np.ndarray  # 4x4, voxel -> world (RAS mm) of the prepared grid
    original_affine: np.ndarray  # 4x4 of the source file, to map predictions back
    original_shape: tuple[int, ...]
    prep_seconds: float = 0.0
    source: dict[str, str] = field(default_factory=dict)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_indices)

    @property
    def nbytes(self) -> int:
        """Bytes this volume occupies in the object store (arrays only; metadata is tiny)."""
        return int(self.image.nbytes + self.label.nbytes + sum(i.nbytes for i in self.class_indices))

    def fits(self, patch_size: Sequence[int]) -> bool:
        return all(s >= p for s, p in zip(self.spatial_shape, patch_size))

    def require_fits(self, patch_size: Sequence[int], parameter: str = "sampler.patch_size") -> None:
        """Raise a :class:`DataError` naming the file when this volume is smaller than a consumer's patch.

        Checked by each consumer for its own patch (never by the shared cache), so one
        experiment's patch size cannot quarantine items for another.
        """
        require_all_fit([self], patch_size, parameter)

    def writable_copy(self) -> "PreparedVolume":
        """The same volume with its own writable image and label (a store object is a read-only view)."""
        return replace(self, image=np.array(self.image), label=np.array(self.label))

    def background_indices(self) -> np.ndarray:
        return self.class_indices[0]


def require_all_fit(volumes: Sequence[PreparedVolume], patch_size: Sequence[int],
                    parameter: str = "sampler.patch_size") -> None:
    """Raise one :class:`DataError` naming every volume smaller than the patch and the setting that chose it.

    The batch-time form of :func:`common.patch_fit.require_patch_fits` (connect checks the shapes
    the cache reports; this checks volumes prepared since, as a consumer fetches them).
    """
    require_patch_fits({v.item_id: v.spatial_shape for v in volumes}, patch_size, parameter,
                       files={v.item_id: v.source.get("image") or v.item_id for v in volumes})


def class_voxel_indices(label: np.ndarray, num_classes: int, image_nbytes: int, seed: int = 0,
                        body: np.ndarray | None = None) -> tuple[tuple[np.ndarray, ...], tuple[int, ...]]:
    """Flat indices per class, subsampled so that together they stay under 25 % of the image bytes.

    Every class keeps at least a share of the budget, so a tiny lesion class keeps all its
    voxels while a huge background is thinned uniformly (a fixed seed keeps it deterministic).
    ``body`` (a mask of the label's shape) limits the background's indices, the negative crop
    centres, to voxels inside it; the counts stay those of the label.
    """
    flat = np.ascontiguousarray(label).reshape(-1)
    dtype = np.int32 if flat.size < 2**31 else np.int64
    budget = max(num_classes, int(image_nbytes * INDEX_BYTE_SHARE) // np.dtype(dtype).itemsize)
    per_class_cap = budget // num_classes
    rng = np.random.default_rng(seed)
    indices, counts = [], []
    for c in range(num_classes):
        is_c = flat == c
        counts.append(int(np.count_nonzero(is_c)))
        if c == 0 and body is not None:
            is_c &= np.ascontiguousarray(body).reshape(-1)
        idx = np.flatnonzero(is_c)
        if idx.size > per_class_cap:
            idx = np.sort(rng.choice(idx, size=per_class_cap, replace=False))
        indices.append(idx.astype(dtype))
    return tuple(indices), tuple(counts)


def body_mask(image: np.ndarray, label: np.ndarray, min_share: float = 0.05) -> np.ndarray | None:
    """Voxels above their channel's minimum in any channel, where negative crops are worth centring.

    After CT clipping and scaling the air around the body sits at the minimum (two thirds of the
    background of an MSD-sized CT at 2 mm), and a crop centred there teaches little; MONAI's
    fast-training recipe keeps such centres out the same way (``FgBgToIndicesd`` with an image
    threshold). None (use the whole background) when the mask keeps under ``min_share`` of the
    background, e.g. an image that is at its minimum almost everywhere.
    """
    lows = image.reshape(image.shape[0], -1).min(axis=1).reshape(-1, *([1] * (image.ndim - 1)))
    body = (image > lows).any(axis=0)
    background = label.reshape(body.shape) == 0
    kept = np.count_nonzero(body & background)
    return body if kept >= min_share * max(1, np.count_nonzero(background)) else None


def adopt_background(indices: tuple[np.ndarray, ...], background: np.ndarray,
                     label: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """The class indices with the user's own background indices (``FgBgToIndicesd``) in place of class 0's.

    MONAI's ``FgBgToIndicesd(image_key=..., image_threshold=...)`` keeps only background inside
    the body, so negative crops are drawn there as ``RandCropByPosNegLabeld`` would; they are
    thinned to the size the byte budget gave class 0. ``None`` when they do not describe this
    label (empty, out of range, or pointing at foreground: computed before a spatial step).
    """
    flat = label.reshape(-1)
    bg = np.asarray(background).reshape(-1).astype(indices[0].dtype)
    if bg.size == 0 or int(bg.max()) >= flat.size or int(bg.min()) < 0 or bool((flat[bg] != 0).any()):
        return None
    if bg.size > indices[0].size:
        bg = np.sort(np.random.default_rng(0).choice(bg, size=indices[0].size, replace=False))
    return (bg, *indices[1:])
