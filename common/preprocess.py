"""The deterministic prefix of the transform chain, and where a chain splits.

Only work that gives the same answer every time may be cached, so a chain is cut at its
first random transform: MONAI marks those with ``Randomizable``, and the project's own
transforms declare ``is_random``. The prefix built here follows the paper: RAS
orientation, resampling to the target spacing (image linear, label nearest), then CT
clipped to dataset-wide foreground percentiles and scaled to [0, 1], or MRI z-scored over
non-zero voxels per volume.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from monai.transforms import (
    Compose,
    FgBgToIndicesd,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    Randomizable,
    ScaleIntensityRanged,
    Spacingd,
)

from common.atomic import atomic_write
from common.catalog import Catalog, Record
from common.config import MAX_VOXELS, PreprocessConfig
from common.errors import DataError, describe_error, root_cause
from common.nifti import LoadCheckedPaird, load_checked_pair
from common.volume import PreparedVolume, adopt_background, body_mask, class_voxel_indices

STATS_SAMPLES_PER_VOLUME = 200_000

log = logging.getLogger(__name__)


def is_random(transform: Any) -> bool:
    """True for MONAI ``Randomizable`` transforms and for any object declaring ``is_random = True``."""
    return isinstance(transform, Randomizable) or bool(getattr(transform, "is_random", False))


def split_chain(chain: Compose | Sequence[Callable]) -> tuple[Compose, Compose]:
    """Split a chain at its first random transform: (cacheable prefix, random suffix)."""
    transforms = list(chain.transforms if isinstance(chain, Compose) else chain)
    cut = next((i for i, t in enumerate(transforms) if is_random(t)), len(transforms))
    return Compose(transforms[:cut]), Compose(transforms[cut:])


@dataclass(frozen=True)
class IntensityStats:
    """Dataset-wide CT clipping window from foreground voxels of the training set."""

    lower: float
    upper: float
    percentiles: tuple[float, float]
    num_volumes: int


class ClipNonzeroPercentilesd(MapTransform):
    """Clip each channel to percentiles of its non-zero voxels (robust to MRI outliers)."""

    is_random = False

    def __init__(self, keys: str, lower: float, upper: float) -> None:
        super().__init__(keys)
        self.lower, self.upper = lower, upper

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.keys:
            img = d[key]
            for c in range(img.shape[0]):
                nz = img[c][img[c] != 0]
                if nz.numel() == 0:
                    continue
                q = torch.quantile(nz.float()[:: max(1, nz.numel() // 1_000_000)],
                                   torch.tensor([self.lower / 100, self.upper / 100]))
                img[c] = torch.clamp(img[c], float(q[0]), float(q[1]))
            d[key] = img
        return d


def resolve_normalization(cfg: PreprocessConfig, catalog: Catalog) -> str:
    """'ct', 'mri' or 'none': 'auto' follows dataset.json's modality (CT, else MRI-style)."""
    if cfg.normalization != "auto":
        return cfg.normalization
    return "ct" if catalog.is_ct else "mri"


def spatial_steps(cfg: PreprocessConfig, keys: Sequence[str], modes: str | Sequence[str]) -> list[Callable]:
    """Reorient, then resample to the target spacing (one interpolation mode per key)."""
    return [Orientationd(keys=keys, axcodes=cfg.orientation.upper(), labels=None),
            Spacingd(keys=keys, pixdim=cfg.spacing, mode=modes, dtype=np.float32)]


def normalization_steps(cfg: PreprocessConfig, norm: str, stats: IntensityStats | None) -> list[Callable]:
    """CT: clip to the dataset window and scale to [0, 1]; MRI: optional clipping, then z-score."""
    if norm == "ct":
        if stats is None:
            raise ValueError("CT normalisation needs dataset-wide IntensityStats; call compute_intensity_stats first")
        return [ScaleIntensityRanged(keys="image", a_min=stats.lower, a_max=stats.upper, b_min=0.0, b_max=1.0,
                                     clip=True)]
    if norm == "mri":
        clip = [] if cfg.clip_percentiles is None else [ClipNonzeroPercentilesd("image", *cfg.clip_percentiles)]
        return [*clip, NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)]
    return []


def deterministic_chain(cfg: PreprocessConfig, num_classes: int, norm: str,
                        stats: IntensityStats | None, num_channels: int = 1) -> Compose:
    """The cacheable MONAI chain for dicts ``{"image": path, "label": path}``."""
    return Compose([LoadCheckedPaird(num_classes, num_channels=num_channels, max_voxels=cfg.max_voxels),
                    *spatial_steps(cfg, ["image", "label"], ("bilinear", "nearest")),
                    *normalization_steps(cfg, norm, stats)])


def _stats_path(stats_dir: str | Path, fp: str) -> Path:
    return Path(stats_dir).expanduser() / f"{fp}.intensity.json"


def _stored_stats(path: Path) -> IntensityStats | None:
    """The statistics kept at ``path``, or None when absent or unreadable (they are then recomputed)."""
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        return IntensityStats(float(raw["lower"]), float(raw["upper"]), tuple(raw["percentiles"]),
                              int(raw["num_volumes"]))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        log.warning("%s: corrupt intensity statistics (%s: %s); recomputing them", path, type(err).__name__, err)
        return None


def compute_intensity_stats(records: Sequence[Record], num_classes: int, percentiles: tuple[float, float],
                            stats_dir: str | Path | None = None, fp: str | None = None, num_channels: int = 1,
                            max_voxels: int = MAX_VOXELS) -> IntensityStats:
    """One pass over the training set: percentiles of foreground intensities, kept beside the fingerprint.

    With ``stats_dir`` and ``fp`` given, a stored result is reused, so every cache
    replica and every restart clips CT with the same window; a corrupt stored file is
    recomputed and replaced rather than ending the run.
    """
    path = _stats_path(stats_dir, fp) if stats_dir is not None and fp is not None else None
    stored = _stored_stats(path) if path is not None else None
    if stored is not None:
        return stored
    rng = np.random.default_rng(0)
    samples = []
    for rec in records:
        image, label, _ = load_checked_pair(rec.image, rec.label, num_classes, num_channels, max_voxels)
        fg = image[0][label[0] > 0]
        if fg.size == 0:
            fg = image[0].reshape(-1)
        if fg.size > STATS_SAMPLES_PER_VOLUME:
            fg = rng.choice(fg, STATS_SAMPLES_PER_VOLUME, replace=False)
        samples.append(fg)
    lo, hi = np.percentile(np.concatenate(samples), percentiles)
    if hi - lo < 1e-6:  # uniform foreground: keep a unit window rather than divide by zero
        hi = lo + 1.0
    stats = IntensityStats(float(lo), float(hi), tuple(percentiles), len(records))
    if path is not None:
        text = json.dumps(asdict(stats))
        atomic_write(path, lambda fh: fh.write(text.encode()), suffix=".json")
    return stats


def _channel_first(d: dict, key: str, item_id: str) -> np.ndarray:
    arr = d[key]
    arr = arr.detach().cpu().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
    if arr.ndim != 4:
        raise DataError(d.get(f"{key}_path", item_id), f"the cached prefix gave '{key}' with shape {arr.shape}; "
                        "it must be channel-first (C, X, Y, Z): add EnsureChannelFirstd to the chain")
    return arr


def finish_volume(d: dict, item_id: str, num_classes: int, patch_size: Sequence[int] | None,
                  seconds: float, background_key: str | None = None) -> PreparedVolume:
    """Turn the chain's output dict into a PreparedVolume (``patch_size``: also check it holds one patch).

    Works for the project's chain and for a user's MONAI prefix (``LoadImaged`` ...), which
    keeps the source affine and shape in the image's MetaTensor metadata instead.
    ``background_key``: where the prefix's ``FgBgToIndicesd`` left the label's background
    indices; they replace the cache's own for negative centres (see ``adopt_background``).
    """
    image = np.ascontiguousarray(_channel_first(d, "image", item_id), dtype=np.float32)
    label = np.ascontiguousarray(np.rint(_channel_first(d, "label", item_id))).astype(np.uint8)
    meta = getattr(d["image"], "meta", None) or {}
    affine = np.asarray(getattr(d["image"], "affine", np.eye(4)), dtype=np.float64)
    original_affine = d.get("original_affine", meta.get("original_affine", affine))
    original_shape = d.get("original_shape", meta.get("spatial_shape", image.shape[1:]))
    own_background = background_key is None or background_key not in d
    indices, counts = class_voxel_indices(label, num_classes, image.nbytes,
                                          body=body_mask(image, label[0]) if own_background else None)
    if not own_background:
        adopted = adopt_background(indices, _flat_indices(d[background_key]), label)
        if adopted is None:
            log.warning("%s: the prefix's %s does not index this label's background (a spatial step after "
                        "FgBgToIndicesd?); negative crops use the whole background", item_id, background_key)
        indices = adopted or indices
    vol = PreparedVolume(
        item_id=item_id, image=image, label=label, class_indices=indices, class_counts=counts,
        affine=affine, original_affine=np.asarray(original_affine, dtype=np.float64),
        original_shape=tuple(int(s) for s in np.asarray(original_shape).reshape(-1)), prep_seconds=seconds,
        source={"image": str(d.get("image_path", meta.get("filename_or_obj", ""))),
                "label": str(d.get("label_path", ""))})
    if patch_size is not None:
        vol.require_fits(patch_size)
    return vol


def _flat_indices(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def background_key(chain: Compose) -> str | None:
    """The key under which a ``FgBgToIndicesd`` on ``label`` in the chain stores background indices."""
    for t in chain.transforms:
        if isinstance(t, FgBgToIndicesd) and "label" in t.keys:
            return f"label{t.bg_postfix}"
    return None


class Preprocessor:
    """Runs the deterministic prefix for one record; a plain, picklable object for Ray tasks."""

    def __init__(self, cfg: PreprocessConfig, num_classes: int, norm: str, stats: IntensityStats | None,
                 patch_size: Sequence[int] | None = None, chain: Compose | None = None,
                 num_channels: int = 1) -> None:
        self.cfg, self.num_classes, self.norm, self.stats = cfg, num_classes, norm, stats
        self.patch_size = tuple(patch_size) if patch_size is not None else None
        self.chain = chain if chain is not None else deterministic_chain(cfg, num_classes, norm, stats, num_channels)
        self.background_key = background_key(self.chain)

    def __call__(self, record: Record) -> PreparedVolume:
        start = time.perf_counter()
        try:
            out = self.chain({"image": record.image, "label": record.label})
        except DataError:
            raise
        except Exception as err:  # MONAI wraps transform errors in "applying transform <...>": report the root
            root = root_cause(err)
            if isinstance(root, DataError):
                raise root from None
            raise DataError(record.image, f"preprocessing failed: {describe_error(root)}") from err
        out = {"image_path": record.image, "label_path": record.label, **out}
        return finish_volume(out, record.item_id, self.num_classes, self.patch_size, time.perf_counter() - start,
                             self.background_key)


def build_preprocessor(catalog: Catalog, cfg: PreprocessConfig, patch_size: Sequence[int] | None,
                       stats_dir: str | Path | None = None, fp: str | None = None) -> Preprocessor:
    """Preprocessor for a catalog, computing (or reusing) CT statistics when CT normalisation is on."""
    norm = resolve_normalization(cfg, catalog)
    stats = None
    if norm == "ct":
        stats = compute_intensity_stats(catalog.train, catalog.num_classes, cfg.ct_percentiles, stats_dir, fp,
                                        catalog.num_channels, cfg.max_voxels)
    return Preprocessor(cfg, catalog.num_classes, norm, stats, patch_size, num_channels=catalog.num_channels)
