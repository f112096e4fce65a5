"""The adaptive positive/negative ratio of the paper (Eq. 2-6), as pure arithmetic.

Validation measures how the model errs: if it misses foreground (false negatives
dominate) training should see more positive crops; if it hallucinates foreground
(false positives dominate) it should see more background. Eq. 4 turns the two error
indices into the next pos/neg ratio. The "stable" indices (Eq. 5-6) are, per class c,

    r_FP = sum(p) / sum(p + g - p*g)      r_FN = sum(g) / sum(p + g - p*g)

with p and g the binary prediction and ground truth of class c. The denominator is the
union (FP + FN + TP: a true positive counted once), so both indices go to 1 as errors
vanish and the ratio r_FN / r_FP settles at 1 instead of swinging on a handful of voxels.
The plain indices (Eq. 2-3) are FP / (FP + FN) and FN / (FP + FN).
Kept free of Ray and torch so the validation actor and the tests share one definition.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FORMULAS = ("stable", "plain")


def as_numpy(x: Any) -> np.ndarray:
    """Accept numpy arrays or torch tensors (on any device) without importing torch here."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def class_counts(pred: np.ndarray, label: np.ndarray, c: int) -> tuple[int, int, int]:
    """(FP, FN, TP) voxel counts for one class, treating it one-vs-rest."""
    p, t = pred == c, label == c
    tp = int(np.count_nonzero(p & t))
    return int(np.count_nonzero(p)) - tp, int(np.count_nonzero(t)) - tp, tp


def _class_indices(fp: int, fn: int, tp: int, formula: str) -> tuple[float, float] | None:
    """(r_fp, r_fn) for one class, or None when its denominator is zero (class left out)."""
    if formula == "plain":
        den = fp + fn
        return None if den == 0 else (fp / den, fn / den)
    union = fp + fn + tp  # sum(p + g - p*g)
    return None if union == 0 else ((fp + tp) / union, (fn + tp) / union)


def error_indices(pred: Any, label: Any, num_classes: int, formula: str = "stable") -> tuple[float, float]:
    """Mean (r_fp, r_fn) over foreground classes 1..num_classes-1 (Eq. 2-3 plain, Eq. 5-6 stable).

    A class with a zero denominator says nothing about the direction of the error, so it
    is left out of the mean; with every class left out the result is the neutral (1, 1),
    which Eq. 4 maps to ratio 1.
    """
    if formula not in FORMULAS:
        raise ValueError(f"formula must be one of {FORMULAS}, got {formula!r}")
    pred_np, label_np = as_numpy(pred), as_numpy(label)
    if pred_np.shape != label_np.shape:
        raise ValueError(f"pred shape {pred_np.shape} does not match label shape {label_np.shape}")
    per_class = [_class_indices(*class_counts(pred_np, label_np, c), formula) for c in range(1, num_classes)]
    kept = [pair for pair in per_class if pair is not None]
    if not kept:
        return 1.0, 1.0
    return float(np.mean([p[0] for p in kept])), float(np.mean([p[1] for p in kept]))


def next_ratio(r_fp: float, r_fn: float, gamma: float = 1.0,
               bounds: tuple[float, float] = (0.1, 10.0)) -> float:
    """Eq. 4: r' = (r_fn / r_fp) ** gamma, clamped to ``bounds``.

    The zero cases are the limits of the formula: no false positives means "show more
    foreground" (the upper bound), no false negatives the lower bound, neither means 1.
    """
    lo, hi = bounds
    if lo <= 0 or lo > hi:
        raise ValueError(f"bounds must satisfy 0 < low <= high, got {bounds}")
    if r_fp < 0 or r_fn < 0:
        raise ValueError(f"error indices must be >= 0, got r_fp={r_fp}, r_fn={r_fn}")
    if r_fp == 0 and r_fn == 0:
        raw = 1.0
    elif r_fp == 0:
        raw = hi
    elif r_fn == 0:
        raw = lo
    else:
        raw = (r_fn / r_fp) ** gamma
    return float(min(hi, max(lo, raw)))


def pos_fraction(ratio: float) -> float:
    """Share of positive crops for a pos/neg ratio r: r / (1 + r)."""
    if ratio < 0:
        raise ValueError(f"ratio must be >= 0, got {ratio}")
    return float(ratio / (1.0 + ratio))
