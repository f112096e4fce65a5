"""CT-sized synthetic cases: 512^2 slices, thick anisotropic slabs, int16 HU, an organ and small lesions.

The small phantoms of :mod:`common.demo_data` prepare in milliseconds, so a cache has
nothing to save on them. These are sized like abdominal CT (MSD spleen): a few hundred
MB of voxels per case once loaded, so loading, reorienting and resampling cost seconds,
as they do with real scans. The anatomy is deliberately simple but not separable by
intensity alone: a liver-like distractor has nearly the organ's HU, and the lesions are
hypodense spots inside the organ.

Because the affine only flips axes (no rotation), world coordinates are separable per
voxel axis; the volume is built slab by slab from 1-D coordinate vectors, which keeps
the peak memory at a few slabs rather than a full float grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CtProfile", "ct_case", "ct_geometry"]

#: slices built at once; bounds the float32 temporaries to a few tens of MB
SLAB = 16


@dataclass(frozen=True)
class CtProfile:
    """Ranges a CT case is drawn from (defaults: abdominal CT as in MSD spleen)."""

    inplane_voxels: int = 512
    slices: tuple[int, int] = (80, 200)
    inplane_spacing: tuple[float, float] = (0.6, 0.9)
    slice_spacing: tuple[float, float] = (1.5, 5.0)
    z_extent_mm: tuple[float, float] = (200.0, 400.0)
    noise_hu: float = 12.0


@dataclass(frozen=True)
class Ellipsoid:
    centre: np.ndarray  # (3,) mm, RAS
    radii: np.ndarray  # (3,) mm


@dataclass(frozen=True)
class CtAnatomy:
    """What one case contains, in world mm (RAS); drawn once, evaluated per slab."""

    body: tuple[float, float]  # semi-axes of the elliptic body cross-section (x, y)
    fat_mm: float
    spine: Ellipsoid  # only x, y used: a cylinder along z
    liver: Ellipsoid
    organ: Ellipsoid
    organ_wobble: tuple[int, int, float, float]
    lesions: tuple[Ellipsoid, ...]
    hu: dict[str, float]


def ct_geometry(rng: np.random.Generator, profile: CtProfile) -> tuple[np.ndarray, tuple[int, int, int]]:
    """An LPS-like (x and y flipped) affine with the slice axis last, and the grid shape."""
    inplane = float(rng.uniform(*profile.inplane_spacing))
    thick = float(rng.uniform(*profile.slice_spacing))
    nz = int(np.clip(round(rng.uniform(*profile.z_extent_mm) / thick), *profile.slices))
    n = profile.inplane_voxels
    shape = (n, n, nz)
    affine = np.diag([-inplane, -inplane, thick, 1.0])
    extent = affine[:3, :3] @ (np.array(shape) - 1)
    affine[:3, 3] = -extent / 2 + rng.uniform(-5, 5, 3)  # world origin near the volume centre
    return affine, shape


def ct_anatomy(rng: np.random.Generator, affine: np.ndarray, shape: tuple[int, int, int]) -> CtAnatomy:
    """Body, fat, spine, a liver-like distractor, the organ (class 1) and 1-3 lesions (class 2) inside it."""
    fov = abs(affine[0, 0]) * shape[0]
    z_mid = affine[2, 3] + affine[2, 2] * (shape[2] - 1) / 2
    z_half = abs(affine[2, 2]) * (shape[2] - 1) / 2
    body = (0.42 * fov, 0.32 * fov)
    organ_c = np.array([rng.uniform(0.35, 0.5) * body[0], rng.uniform(-0.1, 0.3) * body[1],
                        z_mid + rng.uniform(-0.1, 0.1) * z_half])
    organ = Ellipsoid(organ_c, rng.uniform([35, 25, 40], [55, 40, 70]))
    liver = Ellipsoid(np.array([-0.35 * body[0], 0.05 * body[1], organ_c[2] + rng.uniform(-20, 20)]),
                      rng.uniform([60, 55, 60], [80, 70, 90]))
    spine = Ellipsoid(np.array([0.0, -0.7 * body[1], 0.0]), np.array([18.0, 18.0, 1.0]))
    lesions = []
    for _ in range(int(rng.integers(1, 4))):
        offset = rng.uniform(-0.4, 0.4, 3) * organ.radii
        lesions.append(Ellipsoid(organ_c + offset, np.full(3, rng.uniform(8.0, 15.0))))
    organ_hu = float(rng.uniform(55, 75))
    hu = {"air": -1000.0, "fat": -100.0, "soft": 40.0, "bone": float(rng.uniform(400, 700)),
          "liver": organ_hu + float(rng.uniform(-12, -6)), "organ": organ_hu,
          "lesion": organ_hu - float(rng.uniform(30, 45))}
    wobble = (int(rng.integers(2, 5)), int(rng.integers(2, 5)), float(rng.uniform(0, 6.3)), float(rng.uniform(0, 6.3)))
    return CtAnatomy(body, float(rng.uniform(8, 20)), spine, liver, organ, wobble, tuple(lesions), hu)


def _inside(e: Ellipsoid, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    return (((x - e.centre[0]) / e.radii[0]) ** 2 + ((y - e.centre[1]) / e.radii[1]) ** 2
            + ((z - e.centre[2]) / e.radii[2]) ** 2) < 1.0


def _organ(a: CtAnatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """The organ: an ellipsoid with a wobbly (low-order harmonic) surface."""
    dx, dy, dz = x - a.organ.centre[0], y - a.organ.centre[1], z - a.organ.centre[2]
    r = np.sqrt((dx / a.organ.radii[0]) ** 2 + (dy / a.organ.radii[1]) ** 2 + (dz / a.organ.radii[2]) ** 2)
    k0, k1, p0, p1 = a.organ_wobble
    theta, phi = np.arctan2(dy, dx), np.arctan2(dz, np.hypot(dx, dy))
    return r < 1.0 + 0.15 * np.sin(k0 * theta + p0) * np.cos(k1 * phi + p1)


def ct_slab(a: CtAnatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray,
            rng: np.random.Generator, noise_hu: float) -> tuple[np.ndarray, np.ndarray]:
    """HU (int16) and labels (uint8) on the grid x[:,None,None], y[None,:,None], z[None,None,:]."""
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    shape = (x.shape[0], y.shape[1], z.shape[2])
    ell = (x / a.body[0]) ** 2 + (y / a.body[1]) ** 2
    inner = (x / (a.body[0] - a.fat_mm)) ** 2 + (y / (a.body[1] - a.fat_mm)) ** 2
    body, core = np.broadcast_to(ell < 1.0, shape), np.broadcast_to(inner < 1.0, shape)
    organ = _organ(a, x, y, z) & core
    lesion = np.zeros(shape, dtype=bool)
    for e in a.lesions:
        lesion |= _inside(e, x, y, z)
    lesion &= organ
    hu = np.full(shape, a.hu["air"], dtype=np.float32)
    hu[body] = a.hu["fat"]
    hu[core] = a.hu["soft"]
    hu[np.broadcast_to(_inside(a.spine, x, y, a.spine.centre[2]), shape) & core] = a.hu["bone"]
    hu[_inside(a.liver, x, y, z) & core & ~organ] = a.hu["liver"]
    hu[organ] = a.hu["organ"]
    hu[lesion] = a.hu["lesion"]
    hu += rng.standard_normal(shape, dtype=np.float32) * np.float32(noise_hu)
    label = np.zeros(shape, dtype=np.uint8)
    label[organ], label[lesion] = 1, 2
    return np.clip(hu, -1024, 3071).astype(np.int16), label


def ct_case(rng: np.random.Generator, profile: CtProfile = CtProfile()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One CT-like case: (HU int16, label uint8, affine), built slab by slab."""
    affine, shape = ct_geometry(rng, profile)
    anatomy = ct_anatomy(rng, affine, shape)
    axes = [affine[i, i] * np.arange(shape[i], dtype=np.float32) + affine[i, 3] for i in range(3)]
    image = np.empty(shape, dtype=np.int16)
    label = np.empty(shape, dtype=np.uint8)
    for start in range(0, shape[2], SLAB):
        stop = min(start + SLAB, shape[2])
        image[..., start:stop], label[..., start:stop] = ct_slab(anatomy, axes[0], axes[1], axes[2][start:stop],
                                                               rng, profile.noise_hu)
    return image, label, affine
