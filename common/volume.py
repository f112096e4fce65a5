"""The unit the cache stores: one preprocessed volume plus what makes cropping cheap.

A :class:`PreparedVolume` holds only numpy arrays and plain values, so the Ray object
store keeps its arrays out of band and ``ray.get`` returns read-only views into shared
memory instead of copies. The per-class voxel indices let a sampler pick a positive or
negative crop centre in O(1) instead of scanning the label for every crop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

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

    def background_indices(self) -> np.ndarray:
        return self.class_indices[0]


def class_voxel_indices(label: np.ndarray, num_classes: int, image_nbytes: int,
                        seed: int = 0) -> tuple[tuple[np.ndarray, ...], tuple[int, ...]]:
    """Flat indices per class, subsampled so that together they stay under 25 % of the image bytes.

    Every class keeps at least a share of the budget, so a tiny lesion class keeps all its
    voxels while a huge background is thinned uniformly (a fixed seed keeps it deterministic).
    """
    flat = np.ascontiguousarray(label).reshape(-1)
    dtype = np.int32 if flat.size < 2**31 else np.int64
    budget = max(num_classes, int(image_nbytes * INDEX_BYTE_SHARE) // np.dtype(dtype).itemsize)
    per_class_cap = budget // num_classes
    rng = np.random.default_rng(seed)
    indices, counts = [], []
    for c in range(num_classes):
        idx = np.flatnonzero(flat == c)
        counts.append(int(idx.size))
        if idx.size > per_class_cap:
            idx = np.sort(rng.choice(idx, size=per_class_cap, replace=False))
        indices.append(idx.astype(dtype))
    return tuple(indices), tuple(counts)
