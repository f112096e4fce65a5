"""Synthetic CT-like cases in MSD layout, so tests and the demo need nothing from outside.

Two profiles: ``phantom`` (small, quick volumes for tests and the demo, described
below) and ``ct`` (CT-sized cases from :mod:`common.ct_phantom`, for benchmarks where
loading and resampling must cost what they cost with real scans).

The phantoms are built in world coordinates (mm, RAS) and then sampled on a voxel grid
with anisotropic spacing and a non-RAS affine, exactly the situation the deterministic
chain must undo. Each case has a body (soft tissue in air), a large organ-like blob
(class 1) with a wobbly surface and a small enhancing lesion-like sphere (class 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from common.ct_phantom import CtProfile, ct_case
from common.errors import ConfigError

LABELS = ("background", "organ", "lesion")
PROFILES = ("phantom", "ct")
DEFAULT_CASES = {"phantom": 8, "ct": 40}  # ct: about the size of MSD Task09 spleen (41 training cases)


def case_affine(rng: np.random.Generator, size: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A non-RAS (L/P flipped, sometimes axes permuted) anisotropic affine and its grid shape."""
    inplane = float(rng.uniform(0.9, 1.3))
    slab = float(rng.uniform(2.0, 3.0))
    spacing = np.array([inplane, inplane, slab])
    shape = [size, size, max(8, int(round(size * inplane / slab)))]
    axes = np.eye(3)
    if rng.random() < 0.5:  # slice axis first in the file, as some scanners write it
        axes = axes[[2, 0, 1]]
        spacing, shape = spacing[[2, 0, 1]], [shape[2], shape[0], shape[1]]
    direction = np.diag([-1.0, -1.0, 1.0]) @ axes.T  # LPS-like voxel axes
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing
    extent = affine[:3, :3] @ (np.array(shape) - 1)
    affine[:3, 3] = -extent / 2 + rng.uniform(-5, 5, 3)  # world origin near the volume centre
    return affine, (int(shape[0]), int(shape[1]), int(shape[2]))


def world_grid(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """World (RAS mm) coordinates of every voxel centre, shape (3, X, Y, Z)."""
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    xyz = affine[:3, :3].astype(np.float32) @ ijk + affine[:3, 3:4].astype(np.float32)
    return xyz.reshape((3, *shape))


def phantom(xyz: np.ndarray, rng: np.random.Generator, fov_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """CT-like intensities (HU, int16) and labels (uint8) evaluated at world points ``xyz``."""
    x, y, z = xyz
    body = (x / (0.45 * fov_mm)) ** 2 + (y / (0.38 * fov_mm)) ** 2 < 1.0
    centre = rng.uniform(-0.12, 0.12, 3) * fov_mm
    radii = rng.uniform(0.18, 0.26, 3) * fov_mm
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    r = np.sqrt((dx / radii[0]) ** 2 + (dy / radii[1]) ** 2 + (dz / radii[2]) ** 2)
    theta, phi = np.arctan2(dy, dx), np.arctan2(dz, np.hypot(dx, dy))
    k = rng.integers(2, 5, 2)
    wobble = 1.0 + 0.12 * np.sin(k[0] * theta + rng.uniform(0, 6.3)) * np.cos(k[1] * phi + rng.uniform(0, 6.3))
    organ = (r < wobble) & body
    lesion_r = float(rng.uniform(0.07, 0.10) * fov_mm)
    lesion_c = centre + rng.uniform(-0.4, 0.4, 3) * radii
    lesion = ((x - lesion_c[0]) ** 2 + (y - lesion_c[1]) ** 2 + (z - lesion_c[2]) ** 2 < lesion_r**2) & organ
    hu = np.full(x.shape, -1000.0, dtype=np.float32)
    hu[body] = 40.0
    hu[organ] = float(rng.uniform(110, 150))
    hu[lesion] = float(rng.uniform(190, 230))  # enhancing lesion: brighter than the organ
    hu += rng.normal(0, 15, hu.shape).astype(np.float32)
    label = np.zeros(x.shape, dtype=np.uint8)
    label[organ], label[lesion] = 1, 2
    return np.clip(hu, -1024, 3071).astype(np.int16), label


def _phantom_case(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    affine, shape = case_affine(rng, size)
    xyz = world_grid(affine, shape)
    image, label = phantom(xyz, rng, float(np.ptp(xyz[0]) + 1))
    return image, label, affine


def make_demo_data(out_dir: str | Path, cases: int | None = None, size: int = 64, seed: int = 0,
                   profile: str = "phantom", ct: CtProfile = CtProfile(), progress: bool = False) -> Path:
    """Write ``cases`` synthetic cases plus dataset.json; deterministic per seed.

    ``profile="phantom"``: ``size`` in-plane voxels at about 1 mm. ``profile="ct"``: cases
    drawn from ``ct`` (512^2 x 80-200 slices by default; ``size`` is not used).
    """
    if profile not in PROFILES:
        raise ConfigError("--profile", profile, "one of " + ", ".join(PROFILES))
    cases = DEFAULT_CASES[profile] if cases is None else cases
    if cases < 2:
        raise ConfigError("--cases", cases, "at least 2 (one for training, one for validation)")
    if size < 16:
        raise ConfigError("--size", size, "at least 16 voxels")
    out = Path(out_dir)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    items = []
    for i in tqdm(range(cases), desc=f"writing {profile} cases", unit="case", disable=not progress):
        rng = np.random.default_rng([seed, i])
        image, label, affine = ct_case(rng, ct) if profile == "ct" else _phantom_case(rng, size)
        name = f"demo_{i:03d}"
        nib.save(nib.Nifti1Image(image, affine), out / "imagesTr" / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), out / "labelsTr" / f"{name}.nii.gz")
        items.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    what = "CT-sized phantoms" if profile == "ct" else "CT-like phantoms"
    meta = {"name": "SmartCacheDemo", "description": f"synthetic {what} (smartcache make-demo-data --profile {profile})",
            "tensorImageSize": "3D", "modality": {"0": "CT"}, "labels": {str(i): n for i, n in enumerate(LABELS)},
            "numTraining": cases, "numTest": 0, "training": items, "test": []}
    (out / "dataset.json").write_text(json.dumps(meta, indent=2))
    return out
