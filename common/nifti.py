"""Checked NIfTI loading: every way a case can be broken becomes a DataError naming the file.

MONAI's ``LoadImaged`` would surface a truncated gzip or a shape mismatch as a bare
library traceback deep in a worker. Here nibabel reads the pair, the checks run while
the file names are still at hand, and the result is a MONAI ``MetaTensor`` carrying the
affine, so MONAI's own ``Orientationd`` and ``Spacingd`` take over from there.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from common.errors import DataError

AFFINE_TOLERANCE_MM = 1e-3


def read_nifti(path: str, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Return (array, affine) of one NIfTI file or raise DataError saying what is wrong."""
    p = Path(path)
    if not p.is_file():
        raise DataError(path, "file does not exist")
    try:
        img = nib.load(str(p))
        data = np.asarray(img.dataobj, dtype=dtype)
    except (nib.filebasedimages.ImageFileError, EOFError, zlib.error, OSError, ValueError) as err:
        raise DataError(path, f"not a readable NIfTI file (truncated or corrupt?): {err}") from err
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]
    if data.ndim not in (3, 4):
        raise DataError(path, f"expected a 3D volume (or 4D with channels last), got shape {data.shape}")
    return data, np.asarray(img.affine, dtype=np.float64)


def load_checked_pair(image_path: str, label_path: str, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load image (C, X, Y, Z) float32 and label (1, X, Y, Z) uint8 with their shared affine.

    Checks, in order: both files exist and decode, spatial shapes match, affines match
    (within 1e-3 mm), no NaN or infinite intensities, label values are integers in
    ``0..num_classes-1``.
    """
    image, img_affine = read_nifti(image_path, np.float32)
    label_f, lab_affine = read_nifti(label_path, np.float32)
    image = image[None] if image.ndim == 3 else np.moveaxis(image, -1, 0)
    if label_f.ndim == 4 and label_f.shape[-1] == 1:
        label_f = label_f[..., 0]
    if label_f.ndim != 3:
        raise DataError(label_path, f"label must be a 3D volume, got shape {label_f.shape}")
    if image.shape[1:] != label_f.shape:
        raise DataError(label_path, f"label shape {label_f.shape} does not match image shape "
                                    f"{image.shape[1:]} of {image_path}")
    if not np.allclose(img_affine, lab_affine, atol=AFFINE_TOLERANCE_MM):
        raise DataError(label_path, f"label affine differs from the image affine of {image_path}:\n"
                                    f"{np.round(lab_affine, 4)}\nvs\n{np.round(img_affine, 4)}")
    if not np.isfinite(image).all():
        bad = int((~np.isfinite(image)).sum())
        raise DataError(image_path, f"{bad} voxel(s) are NaN or infinite")
    values = np.unique(label_f)
    bad_values = values[(values != np.round(values)) | (values < 0) | (values >= num_classes)]
    if bad_values.size:
        shown = [int(v) if v == int(v) else float(v) for v in bad_values[:10]]
        raise DataError(label_path, f"label values {shown} are outside the declared classes "
                                    f"0..{num_classes - 1} of dataset.json")
    return image, label_f.astype(np.uint8)[None], img_affine


class LoadCheckedPaird(MapTransform):
    """Deterministic MONAI transform: paths in ``image``/``label`` -> checked MetaTensors."""

    def __init__(self, num_classes: int, keys: tuple[str, str] = ("image", "label")) -> None:
        super().__init__(keys)
        self.num_classes = num_classes

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        ik, lk = self.keys
        image, label, affine = load_checked_pair(str(d[ik]), str(d[lk]), self.num_classes)
        d[f"{ik}_path"], d[f"{lk}_path"] = str(d[ik]), str(d[lk])
        d["original_affine"], d["original_shape"] = affine, tuple(image.shape[1:])
        aff = torch.as_tensor(affine)
        d[ik] = MetaTensor(torch.from_numpy(image), affine=aff)
        d[lk] = MetaTensor(torch.from_numpy(label), affine=aff.clone())
        return d
