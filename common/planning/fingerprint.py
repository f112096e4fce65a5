"""The dataset fingerprint: per-case statistics and the dataset-wide numbers the rules read.

As nnU-Net's ``DatasetFingerprintExtractor`` and MONAI's ``DataAnalyzer``, it is computed
once per set of files and kept: a second plan reads it back instead of opening every scan.
Geometry is reported in RAS axis order (the planner's target orientation), so the median
extent of an axis means the same axis in every case whatever its file's orientation.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np

from common.atomic import atomic_write
from common.catalog import Record
from common.config import PreprocessConfig
from common.nifti import load_checked_pair
from common.preprocess import deterministic_chain

#: intensity percentiles kept per case (CT: of foreground voxels; MRI: of non-zero voxels)
PERCENTILES = (0.5, 1.0, 5.0, 50.0, 95.0, 99.0, 99.5)
#: voxels sampled per case for the intensity statistics (as compute_intensity_stats)
INTENSITY_SAMPLES = 200_000
#: the spacing at which one case's preparation is timed (the paper's, and the costliest usual target)
TIMING_SPACING = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class CaseStats:
    """What one labelled case tells the planner; spacing, shape and extents in RAS axis order."""

    item_id: str
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    orientation: str
    channels: int
    fg_percentiles: tuple[float, ...]  # PERCENTILES of foreground voxels (first channel)
    nonzero_percentiles: tuple[float, ...]  # PERCENTILES of non-zero voxels (first channel)
    nonzero_mean: float
    nonzero_std: float
    max_intensity: float
    class_fractions: tuple[float, ...]  # per class value: share of the volume's voxels
    fg_extent_mm: tuple[float, float, float]  # bounding box of all foreground, per axis
    prep_seconds: float | None  # load + reorient + resample to TIMING_SPACING; None when not timed

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        return tuple(float(n * s) for n, s in zip(self.shape, self.spacing))  # type: ignore[return-value]


def _ras_order(affine: np.ndarray) -> tuple[list[int], str]:
    """For each RAS axis, the file axis that maps to it; and the file's own axis codes."""
    ornt = nib.orientations.io_orientation(affine)
    order = [0, 0, 0]
    for file_axis, (ras_axis, _) in enumerate(ornt[:3]):
        order[int(ras_axis)] = file_axis
    return order, "".join(nib.aff2axcodes(affine))


def _percentiles(values: np.ndarray, rng: np.random.Generator) -> tuple[float, ...]:
    if values.size == 0:
        return tuple(0.0 for _ in PERCENTILES)
    if values.size > INTENSITY_SAMPLES:
        values = rng.choice(values, INTENSITY_SAMPLES, replace=False)
    return tuple(float(v) for v in np.percentile(values, PERCENTILES))


def _fg_extent(label: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Bounding box of the foreground in mm per file axis (zeros without foreground)."""
    fg = np.nonzero(label > 0)
    if fg[0].size == 0:
        return np.zeros(3)
    return np.array([(ax.max() - ax.min() + 1) for ax in fg], dtype=np.float64) * spacing


def time_preparation(record: Record, num_classes: int) -> float:
    """Seconds to load, reorient and resample one case to 1 mm: the cache's cost of preparing it."""
    chain = deterministic_chain(PreprocessConfig(spacing=TIMING_SPACING), num_classes, "none", None)
    start = time.perf_counter()
    chain({"image": record.image, "label": record.label})
    return time.perf_counter() - start


def case_statistics(record: Record, num_classes: int, timed: bool = False) -> CaseStats:
    """Statistics of one case (a plain function: Ray runs one task per case)."""
    image, label, affine = load_checked_pair(record.image, record.label, num_classes)
    order, codes = _ras_order(affine)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    first = image[0]
    rng = np.random.default_rng(0)
    nonzero = first[first != 0]
    counts = np.bincount(label.reshape(-1), minlength=num_classes)
    extent = _fg_extent(label[0], spacing)
    return CaseStats(
        item_id=record.item_id,
        spacing=tuple(float(spacing[a]) for a in order),  # type: ignore[arg-type]
        shape=tuple(int(first.shape[a]) for a in order),  # type: ignore[arg-type]
        orientation=codes, channels=int(image.shape[0]),
        fg_percentiles=_percentiles(first[label[0] > 0], rng),
        nonzero_percentiles=_percentiles(nonzero, rng),
        nonzero_mean=float(nonzero.mean()) if nonzero.size else 0.0,
        nonzero_std=float(nonzero.std()) if nonzero.size else 0.0,
        max_intensity=float(first.max()),
        class_fractions=tuple(float(c) / label.size for c in counts),
        fg_extent_mm=tuple(float(extent[a]) for a in order),  # type: ignore[arg-type]
        prep_seconds=time_preparation(record, num_classes) if timed else None)


def _median3(rows: Sequence[Sequence[float]]) -> tuple[float, float, float]:
    return tuple(float(np.median([r[a] for r in rows])) for a in range(3))  # type: ignore[return-value]


@dataclass(frozen=True)
class DatasetFingerprint:
    """Every case's statistics plus what dataset.json declares; the rules' only view of the data."""

    name: str
    modality: str
    labels: tuple[str, ...]
    num_train: int
    cases: tuple[CaseStats, ...]

    @property
    def is_ct(self) -> bool:
        return self.modality.strip().upper() == "CT"

    @property
    def channels(self) -> int:
        return self.cases[0].channels

    def median_spacing(self) -> tuple[float, float, float]:
        return _median3([c.spacing for c in self.cases])

    def spacing_percentile(self, axis: int, q: float) -> float:
        return float(np.percentile([c.spacing[axis] for c in self.cases], q))

    def median_extent_mm(self) -> tuple[float, float, float]:
        return _median3([c.extent_mm for c in self.cases])

    def median_fg_extent_mm(self) -> tuple[float, float, float]:
        return _median3([c.fg_extent_mm for c in self.cases])

    def fg_percentile(self, q: float) -> float:
        """Median over cases of one foreground percentile (CT window evidence)."""
        return float(np.median([c.fg_percentiles[PERCENTILES.index(q)] for c in self.cases]))

    def nonzero_p99_spread(self) -> float:
        """Largest over smallest per-case 99th percentile of non-zero intensities (scanner differences)."""
        p99 = [abs(c.nonzero_percentiles[PERCENTILES.index(99.0)]) for c in self.cases]
        return max(p99) / max(min(p99), 1e-6)

    def outlier_ratio(self) -> float:
        """Largest over cases of max intensity / 99th percentile: how far bright outliers reach."""
        return max(c.max_intensity / max(abs(c.nonzero_percentiles[PERCENTILES.index(99.0)]), 1e-6)
                   for c in self.cases)

    def mean_class_fractions(self) -> tuple[float, ...]:
        return tuple(statistics.fmean(c.class_fractions[k] for c in self.cases) for k in range(len(self.labels)))

    def prep_seconds(self) -> float:
        """Median measured preparation time of one case at 1 mm (0 when none was timed)."""
        timed = [c.prep_seconds for c in self.cases if c.prep_seconds is not None]
        return float(np.median(timed)) if timed else 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "DatasetFingerprint":
        cases = tuple(CaseStats(**{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()})
                      for c in raw["cases"])
        return cls(raw["name"], raw["modality"], tuple(raw["labels"]), int(raw["num_train"]), cases)


def fingerprint_path(stats_dir: Path, key: str) -> Path:
    """Beside the CT intensity statistics (``<key>.intensity.json``) in ``cache.stats_path()``."""
    return stats_dir / f"{key}.dataset.json"


def save_fingerprint(fp: DatasetFingerprint, stats_dir: Path, key: str) -> Path:
    path = fingerprint_path(stats_dir, key)
    text = fp.to_json()
    atomic_write(path, lambda fh: fh.write(text), mode="w")
    return path


def load_fingerprint(stats_dir: Path, key: str) -> DatasetFingerprint | None:
    """The stored fingerprint for these files, or None when there is none yet."""
    path = fingerprint_path(stats_dir, key)
    if not path.is_file():
        return None
    return DatasetFingerprint.from_dict(json.loads(path.read_text()))
