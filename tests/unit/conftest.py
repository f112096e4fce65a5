"""Helpers for unit tests: tiny NIfTI files written on the fly."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


def write_case(root: Path, name: str, image: np.ndarray, label: np.ndarray, affine: np.ndarray,
               label_affine: np.ndarray | None = None) -> dict[str, str]:
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(label, affine if label_affine is None else label_affine),
             root / "labelsTr" / f"{name}.nii.gz")
    return {"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"}


def write_dataset(root: Path, items: list[dict[str, str]], modality: str = "CT",
                  labels: tuple[str, ...] = ("background", "organ")) -> Path:
    meta = {"name": "T", "modality": {"0": modality}, "labels": {str(i): n for i, n in enumerate(labels)},
            "training": items}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def make_case():
    return write_case


@pytest.fixture
def make_dataset():
    return write_dataset
