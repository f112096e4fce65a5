"""Where the dataset lives, how it is split, and the deterministic chain whose output is cached."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from common.config.fields import Bool, Float, Int, Pair, Str, exactly, rule
from common.config.section import Section


def _axis_codes(code: str) -> bool:
    """Three letters, one of each pair L/R, A/P, S/I, in any order (RAS, LPS, PIR, ...)."""
    code = code.upper()
    return len(code) == 3 and all(sum(c in pair for c in code) == 1 for pair in ("LR", "AP", "SI"))


def _percentiles(pair: tuple[float, float]) -> bool:
    return 0.0 <= pair[0] <= pair[1] <= 100.0


Percentiles = Annotated[Pair, rule(_percentiles, "[low, high] percentiles with 0 <= low <= high <= 100")]


class DataConfig(Section):
    """Where the MSD dataset lives and how it is split into train and validation."""

    section: ClassVar[str] = "data"

    dataset_dir: Str = ""
    """The MSD task folder (the one with dataset.json)."""
    val_fraction: Annotated[Float, rule(lambda v: 0.0 <= v < 1.0, "a fraction in [0, 1)")] = 0.2
    split_seed: Int = 0
    val_ids: tuple[Str, ...] = ()
    """Validation cases by id; when given, val_fraction is not used."""
    allow_outside_paths: Bool = False
    """true: dataset.json may list files outside its folder (trusted datasets only)."""


MAX_VOXELS = 1024 ** 3
"""4 GiB as float32: above any CT/MRI volume (512^2 x 2000 is 0.5e9), far below a bad header's claim."""


class PreprocessConfig(Section):
    """The deterministic chain whose output is cached (the paper's 1 mm RAS + normalisation)."""

    section: ClassVar[str] = "preprocessing"

    spacing: Annotated[tuple[Float, Float, Float], exactly(3),
                       rule(lambda v: all(s > 0 for s in v), "three positive numbers in mm, e.g. [1.0, 1.0, 1.0]")
                       ] = (1.0, 1.0, 1.0)
    orientation: Annotated[Str, rule(_axis_codes, "three axis codes such as RAS or LPS")] = "RAS"
    normalization: Literal["auto", "ct", "mri", "none"] = "auto"
    """auto: from dataset.json's modality; ct: clip to ct_percentiles of the dataset and scale; mri: z-score."""
    ct_percentiles: Percentiles = (5.0, 95.0)
    clip_percentiles: Annotated[Pair, rule(_percentiles, "[low, high] percentiles with 0 <= low <= high <= 100, "
                                           "or null to switch clipping off")] | None = None
    """Per volume, of the non-zero voxels, before scaling; null: no clipping."""
    max_voxels: Annotated[Int, rule(lambda v: v > 0, "a positive number of voxels")] = MAX_VOXELS
    """A NIfTI header declaring more voxels is refused before any data is read (common.nifti)."""
