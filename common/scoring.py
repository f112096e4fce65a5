"""Scoring a validation round: per-class Dice, r_FP, r_FN (paper Eq. 5-6) and the next ratio (Eq. 4).

The SDK (``Experiment.report_validation`` in a user's loop) and the project's validation
actor (:class:`trainer.validation.Validator`) both score here, so the same prediction gives
the same numbers, and the same next crop ratio, whoever scores it. Dice is MONAI's
(``monai.metrics.compute_dice``, foreground classes only); the error indices are
:func:`common.ratio.error_indices`.

Inputs are what MONAI users hold, torch (``MetaTensor`` included) or numpy, and ``pred`` and
``label`` may come in different forms:

* class maps: ``(X, Y, Z)``, ``(1, X, Y, Z)`` or batched ``(B, 1, X, Y, Z)``, integer values
  ``0 .. num_classes - 1`` (what ``AsDiscrete(argmax=True)`` gives);
* one-hot: ``(C, X, Y, Z)`` or batched ``(B, C, X, Y, Z)`` with ``C == num_classes`` (what
  ``AsDiscrete(argmax=True, to_onehot=C)`` gives).

Ambiguity rule: a channel dimension (the leading one of a 4-D input, the second of a 5-D
one) of size ``num_classes`` whose values are all 0/1 and sum to 1 over that dimension at
every voxel is one-hot; a channel of size 1 is a class map; anything else is refused with
the fix rather than guessed. Logits and probabilities (non-integer values, or several
channels that are not one-hot) are refused with a hint to take the ``argmax`` first:
scoring them as class maps would publish a wrong ratio without a word.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from monai.metrics import compute_dice

from common.config import SamplerConfig
from common.errors import ConfigError
from common.ratio import as_numpy, error_indices, next_ratio

SPATIAL_DIMS = 3
ACCEPTED = ("class maps (X, Y, Z), (1, X, Y, Z) or (B, 1, X, Y, Z), or one-hot (C, X, Y, Z) or (B, C, X, Y, Z) "
            "with C = num_classes")
ARGMAX_HINT = ("take the argmax over the class channel first, e.g. monai.transforms.AsDiscrete(argmax=True) "
               "or logits.argmax(dim=1, keepdim=True)")


@dataclass(frozen=True)
class CaseScore:
    """One case: Dice of each foreground class (1..K-1) and its error indices (Eq. 5-6 or 2-3)."""

    dice: tuple[float, ...]
    r_fp: float
    r_fn: float


@dataclass(frozen=True)
class ValidationResult:
    """One validation round, however it was measured: what the registry publishes and the run report keeps."""

    epoch: int
    dice_per_class: tuple[float, ...]  # foreground classes 1..K-1, mean over cases
    mean_dice: float
    r_fp: float
    r_fn: float
    ratio: float  # the pos/neg ratio the next epoch crops with
    seconds: float = 0.0
    case_dice: dict[str, float] = field(default_factory=dict)  # mean foreground Dice per case id

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _describe(arr: np.ndarray) -> str:
    """Shape, dtype and value range: what an error message shows of an input it refuses."""
    if arr.size == 0:
        return f"{arr.dtype} array of shape {tuple(arr.shape)}"
    return f"{arr.dtype} array of shape {tuple(arr.shape)}, values in [{arr.min():.4g}, {arr.max():.4g}]"


def _is_one_hot(arr: np.ndarray) -> bool:
    """Values all 0/1 and exactly one 1 per voxel along the channel axis (axis 1 of a (B, C, ...) array)."""
    return bool(np.isin(arr, (0, 1)).all() and (arr.sum(axis=1) == 1).all())


def to_class_maps(x: Any, num_classes: int, name: str = "pred") -> np.ndarray:
    """``x`` in any accepted form (module docstring) as class maps (B, X, Y, Z); ``name`` is the argument, for errors."""
    arr = as_numpy(x)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if arr.ndim not in (SPATIAL_DIMS, SPATIAL_DIMS + 1, SPATIAL_DIMS + 2) or arr.size == 0:
        raise ConfigError(name, _describe(arr), ACCEPTED)
    if not (np.issubdtype(arr.dtype, np.integer) or np.isfinite(arr).all() and (np.mod(arr, 1) == 0).all()):
        raise ConfigError(name, _describe(arr), f"integer classes, not logits or probabilities: {ARGMAX_HINT}")
    batched = arr.reshape((1,) * (SPATIAL_DIMS + 2 - arr.ndim) + arr.shape)  # (B, C, X, Y, Z)
    channels = batched.shape[1]
    if channels == num_classes and channels > 1 and _is_one_hot(batched):
        maps = batched.argmax(axis=1)
    elif channels == 1:
        maps = batched[:, 0]
        lo, hi = maps.min(), maps.max()
        if lo < 0 or hi >= num_classes:
            raise ConfigError(name, _describe(arr), f"class values 0..{num_classes - 1} (num_classes={num_classes}); "
                                                    "a map with values outside needs the dataset's label numbering")
    else:
        raise ConfigError(name, _describe(arr), f"a channel of size {channels} is neither a class map (1) nor one-hot "
                                                f"(num_classes={num_classes}, 0/1 values summing to 1 per voxel); for "
                                                f"probabilities or scores, {ARGMAX_HINT}; a batch of class maps "
                                                f"(B, X, Y, Z) needs its channel, x[:, None]; accepted: {ACCEPTED}")
    # writeable: torch.from_numpy warns on the read-only views the object store hands out
    return np.require(maps, np.uint8 if num_classes <= 256 else np.int64, requirements="CW")


def score(pred: Any, label: Any, num_classes: int, formula: str = "stable") -> list[CaseScore]:
    """Dice (MONAI), r_FP and r_FN of each case in ``pred`` vs ``label`` (one case, or B of a batched input)."""
    p, y = to_class_maps(pred, num_classes, "pred"), to_class_maps(label, num_classes, "label")
    if p.shape != y.shape:
        raise ConfigError("label", f"class maps of shape {p.shape[1:]} x {p.shape[0]} case(s) for pred, {y.shape[1:]} "
                                   f"x {y.shape[0]} for label", "the same cases and spatial shape for pred and label")
    dice = compute_dice(torch.from_numpy(p[:, None]), torch.from_numpy(y[:, None]), include_background=False,
                        ignore_empty=False, num_classes=num_classes)  # a class absent from both scores 1
    return [CaseScore(tuple(float(d) for d in dice[b]), *error_indices(p[b], y[b], num_classes, formula))
            for b in range(p.shape[0])]


def summarise(epoch: int, cases: Sequence[CaseScore], num_classes: int, sampler: SamplerConfig,
              current_ratio: float, *, case_ids: Sequence[str] | None = None,
              seconds: float = 0.0) -> ValidationResult:
    """Means over cases and the next ratio r' = (r_FN / r_FP) ** gamma, clamped (``current_ratio`` if not adaptive).

    With no case the indices are the neutral (1, 1) and Dice is 0; ``case_ids`` default to positions "0", "1", ...
    """
    ids = [str(i) for i in range(len(cases))] if case_ids is None else list(case_ids)
    if len(ids) != len(cases):
        raise ValueError(f"{len(ids)} case ids for {len(cases)} scored cases")
    per_class = np.mean([c.dice for c in cases], axis=0) if cases else np.zeros(num_classes - 1)
    r_fp = float(np.mean([c.r_fp for c in cases])) if cases else 1.0
    r_fn = float(np.mean([c.r_fn for c in cases])) if cases else 1.0
    ratio = next_ratio(r_fp, r_fn, sampler.gamma, sampler.ratio_bounds) if sampler.adaptive else current_ratio
    return ValidationResult(epoch, tuple(float(d) for d in per_class), float(np.mean(per_class)) if per_class.size
                            else 0.0, r_fp, r_fn, float(ratio), seconds,
                            {i: float(np.mean(c.dice)) for i, c in zip(ids, cases)})
