"""Checked NIfTI loading: every way a case can be broken becomes a DataError naming the file.

MONAI's ``LoadImaged`` would surface a truncated gzip or a shape mismatch as a bare
library traceback deep in a worker. Here nibabel reads the pair, the checks run while
the file names are still at hand, and the result is a MONAI ``MetaTensor`` carrying the
affine, so MONAI's own ``Orientationd`` and ``Spacingd`` take over from there.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from common.config import MAX_VOXELS
from common.errors import DataError

AFFINE_TOLERANCE_MM = 1e-3


def _declared_shape(path: Path, img: nib.Nifti1Image, max_voxels: int) -> tuple[int, ...]:
    """The array shape the header promises, refused before anything is allocated if it cannot be real.

    An uncompressed file must hold the declared bytes after its data offset; a compressed
    one cannot be sized without inflating it, so the voxel limit (``preprocessing.max_voxels``)
    bounds what a corrupt or hostile header can make the reader allocate.
    """
    shape = tuple(int(s) for s in img.header.get_data_shape())
    voxels = math.prod(shape)
    if path.name.endswith(".nii"):
        itemsize = np.dtype(img.get_data_dtype()).itemsize
        needed = int(img.header.get_data_offset()) + voxels * itemsize
        size = path.stat().st_size
        if needed > size:
            raise DataError(str(path), f"header declares shape {shape} ({voxels * itemsize} bytes of data) but the "
                                       f"file has only {size} bytes: truncated, or a corrupt header")
    if voxels > max_voxels:
        raise DataError(str(path), f"header declares shape {shape} = {voxels} voxels, more than the limit of "
                                   f"{max_voxels} (preprocessing.max_voxels): a corrupt header, or raise the limit "
                                   "if the volume is really that large")
    return shape


def read_nifti(path: str, dtype: type | None = np.float32,
               max_voxels: int = MAX_VOXELS) -> tuple[np.ndarray, np.ndarray]:
    """Return (array, affine) of one NIfTI file or raise DataError saying what is wrong.

    The header is checked first (:func:`_declared_shape`), so a tiny file that declares
    10000^3 voxels is refused instead of ending the process with a MemoryError.
    ``dtype=None`` keeps the file's own type (after any scaling the header asks for), so a
    uint8 label is not inflated to four bytes per voxel before it is checked.
    """
    data, affine, _ = _read(path, dtype, max_voxels)
    return data, affine


def _read(path: str, dtype: type | None, max_voxels: int) -> tuple[np.ndarray, np.ndarray, np.dtype]:
    """:func:`read_nifti`, also returning the type the file stores its voxels in."""
    p = Path(path)
    if not p.is_file():
        raise DataError(path, "file does not exist")
    try:
        img = nib.load(str(p))
        shape = _declared_shape(p, img, max_voxels)
        if len(shape) == 5 and shape[3] == 1:
            shape = shape[:3] + shape[4:]
        if len(shape) not in (3, 4):
            raise DataError(path, f"expected a 3D volume (or 4D with channels last), got shape {shape}")
        data = (np.asanyarray(img.dataobj) if dtype is None else np.asarray(img.dataobj, dtype=dtype)).reshape(shape)
    except DataError:
        raise
    except (nib.filebasedimages.ImageFileError, EOFError, zlib.error, OSError, ValueError) as err:
        raise DataError(path, f"not a readable NIfTI file (truncated or corrupt?): {err}") from err
    except MemoryError as err:
        raise DataError(path, f"the volume does not fit in memory ({type(err).__name__}: {err}); "
                              "lower preprocessing.max_voxels to refuse such files up front") from err
    return data, np.asarray(img.affine, dtype=np.float64), np.dtype(img.get_data_dtype())


def _channels_first(image: np.ndarray, path: str, num_channels: int) -> np.ndarray:
    """(C, X, Y, Z) with C checked against the modalities dataset.json lists (a network's in_channels)."""
    channels = 1 if image.ndim == 3 else image.shape[-1]
    if channels != num_channels:
        expected = "a 3D volume" if num_channels == 1 else f"a 4D volume with {num_channels} channels last"
        raise DataError(path, f"image has {channels} channel(s) (shape {image.shape}) but dataset.json's "
                              f"'modality' lists {num_channels}: expected {expected}")
    return image[None] if image.ndim == 3 else np.moveaxis(image, -1, 0)


def _label_problem(label: np.ndarray, num_classes: int) -> list[int | float]:
    """Label values that are not integers in ``0..num_classes-1`` (at most 10), found without sorting.

    A CT label has tens of millions of voxels; ``np.unique`` over all of them sorted a copy and
    cost more CPU than resampling the case. The range (and, for float labels, integrality) is
    checked in a few passes, and only the offending voxels' values are collected.
    """
    if np.issubdtype(label.dtype, np.integer):
        if label.size == 0 or (int(label.min()) >= 0 and int(label.max()) < num_classes):
            return []
        bad = (label < 0) | (label >= num_classes)
    else:
        bad = ~((label >= 0) & (label < num_classes) & (label == np.floor(label)))
        if not bad.any():
            return []
    values = np.unique(label[bad])[:10]
    return [int(v) if np.isfinite(v) and v == int(v) else float(v) for v in values]


def load_checked_pair(image_path: str, label_path: str, num_classes: int, num_channels: int = 1,
                      max_voxels: int = MAX_VOXELS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load image (C, X, Y, Z) float32 and label (1, X, Y, Z) uint8 with their shared affine.

    Checks, in order: both headers are sane (size, voxel limit, 3D/4D), both files exist
    and decode, the image has ``num_channels`` channels, spatial shapes match, affines match
    (within 1e-3 mm), no NaN or infinite intensities (only a float file can hold them), label
    values are integers in ``0..num_classes-1``.
    """
    image, img_affine, stored = _read(image_path, np.float32, max_voxels)
    image = _channels_first(image, image_path, num_channels)
    label, lab_affine = read_nifti(label_path, None, max_voxels)
    if label.ndim == 4 and label.shape[-1] == 1:
        label = label[..., 0]
    if label.ndim != 3:
        raise DataError(label_path, f"label must be a 3D volume, got shape {label.shape}")
    if image.shape[1:] != label.shape:
        raise DataError(label_path, f"label shape {label.shape} does not match image shape "
                                    f"{image.shape[1:]} of {image_path}")
    if not np.allclose(img_affine, lab_affine, atol=AFFINE_TOLERANCE_MM):
        raise DataError(label_path, f"label affine differs from the image affine of {image_path}:\n"
                                    f"{np.round(lab_affine, 4)}\nvs\n{np.round(img_affine, 4)}")
    if np.issubdtype(stored, np.floating) and not np.isfinite(image).all():  # integers cannot be NaN
        bad = int((~np.isfinite(image)).sum())
        raise DataError(image_path, f"{bad} voxel(s) are NaN or infinite")
    bad_values = _label_problem(label, num_classes)
    if bad_values:
        raise DataError(label_path, f"label values {bad_values} are outside the declared classes "
                                    f"0..{num_classes - 1} of dataset.json")
    return image, label.astype(np.uint8)[None], img_affine


class LoadCheckedPaird(MapTransform):
    """Deterministic MONAI transform: paths in ``image``/``label`` -> checked MetaTensors."""

    def __init__(self, num_classes: int, keys: tuple[str, str] = ("image", "label"), num_channels: int = 1,
                 max_voxels: int = MAX_VOXELS) -> None:
        super().__init__(keys)
        self.num_classes, self.num_channels, self.max_voxels = num_classes, num_channels, max_voxels

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        ik, lk = self.keys
        image, label, affine = load_checked_pair(str(d[ik]), str(d[lk]), self.num_classes, self.num_channels,
                                                  self.max_voxels)
        d[f"{ik}_path"], d[f"{lk}_path"] = str(d[ik]), str(d[lk])
        d["original_affine"], d["original_shape"] = affine, tuple(image.shape[1:])
        aff = torch.as_tensor(affine)
        d[ik] = MetaTensor(torch.from_numpy(image), affine=aff)
        d[lk] = MetaTensor(torch.from_numpy(label), affine=aff.clone())
        return d
