"""Eq. 2-6 on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.ratio import class_counts, error_indices, next_ratio, pos_fraction


def _maps() -> tuple[np.ndarray, np.ndarray]:
    # class 1: TP=2, FP=1, FN=3 ; class 2: TP=1, FP=2, FN=0
    label = np.array([1, 1, 1, 1, 1, 0, 2, 0, 0, 0])
    pred = np.array([1, 1, 0, 0, 2, 1, 2, 2, 0, 0])
    return pred, label


def test_class_counts_by_hand() -> None:
    pred, label = _maps()
    assert class_counts(pred, label, 1) == (1, 3, 2)
    assert class_counts(pred, label, 2) == (2, 0, 1)


def test_plain_formula() -> None:
    pred, label = _maps()
    r_fp, r_fn = error_indices(pred, label, 3, formula="plain")
    # class 1: 1/4, 3/4 ; class 2: 2/2, 0/2
    assert r_fp == pytest.approx((0.25 + 1.0) / 2)
    assert r_fn == pytest.approx((0.75 + 0.0) / 2)


def test_stable_formula() -> None:
    pred, label = _maps()
    r_fp, r_fn = error_indices(pred, label, 3, formula="stable")
    # Eq. 5-6, denominator sum(p + g - p*g) = FP + FN + TP (the union):
    # class 1: sum p = 3, sum g = 5, union = 1+3+2 = 6 -> 3/6, 5/6
    # class 2: sum p = 3, sum g = 1, union = 2+0+1 = 3 -> 3/3, 1/3
    assert r_fp == pytest.approx((3 / 6 + 3 / 3) / 2)
    assert r_fn == pytest.approx((5 / 6 + 1 / 3) / 2)


def _eq56_as_written(pred: np.ndarray, label: np.ndarray, c: int) -> tuple[float, float]:
    """The paper's sums over voxels, on the binary maps of class c."""
    p, g = (pred == c).astype(float), (label == c).astype(float)
    union = np.sum(p + g - p * g)
    return float(np.sum(p) / union), float(np.sum(g) / union)


def test_stable_matches_the_sums_of_eq_5_6_with_several_classes() -> None:
    rng = np.random.default_rng(7)
    label = rng.integers(0, 4, size=(6, 7, 5))
    pred = np.where(rng.random(label.shape) < 0.7, label, rng.integers(0, 4, size=label.shape))
    per_class = [_eq56_as_written(pred, label, c) for c in (1, 2, 3)]
    expected = (np.mean([r[0] for r in per_class]), np.mean([r[1] for r in per_class]))
    assert error_indices(pred, label, 4, "stable") == pytest.approx(expected)


def test_stable_indices_go_to_one_as_errors_vanish() -> None:
    label = np.array([0, 1, 1, 2, 2, 2, 3])
    assert error_indices(label.copy(), label, 4, "stable") == pytest.approx((1.0, 1.0))
    assert next_ratio(*error_indices(label.copy(), label, 4, "stable")) == pytest.approx(1.0)


def test_stable_with_empty_classes_by_hand() -> None:
    # class 1: TP=1 FP=1 FN=0 -> union 2 -> (2/2, 1/2)
    # class 2: predicted only (FP=2) -> union 2 -> (2/2, 0/2)
    # class 3: absent from both -> left out of the mean
    label = np.array([1, 0, 0, 0, 0])
    pred = np.array([1, 1, 2, 2, 0])
    assert error_indices(pred, label, 4, "stable") == pytest.approx(((1.0 + 1.0) / 2, (0.5 + 0.0) / 2))


def test_stable_leaves_out_class_absent_from_both() -> None:
    label = np.array([0, 1, 1, 0])
    pred = np.array([0, 1, 0, 0])
    # class 2 absent everywhere -> left out; class 1: FP=0 FN=1 TP=1, union 2 -> 1/2, 2/2
    assert error_indices(pred, label, 3) == pytest.approx((1 / 2, 1.0))


def test_plain_leaves_out_perfect_class() -> None:
    label = np.array([0, 1, 1, 2])
    pred = np.array([0, 1, 1, 0])
    # class 1 perfect -> left out in plain (kept in stable); class 2: FP=0 FN=1
    assert error_indices(pred, label, 3, "plain") == pytest.approx((0.0, 1.0))
    # stable: class 1 union 2 -> (2/2, 2/2); class 2 union 1 -> (0/1, 1/1)
    assert error_indices(pred, label, 3, "stable") == pytest.approx(((1.0 + 0.0) / 2, (1.0 + 1.0) / 2))


def test_all_classes_left_out_is_neutral() -> None:
    zeros = np.zeros((3, 3, 3), dtype=np.int64)
    assert error_indices(zeros, zeros, 2, "stable") == (1.0, 1.0)
    perfect = np.ones((2, 2), dtype=np.int64)
    assert error_indices(perfect, perfect, 2, "plain") == (1.0, 1.0)


def test_accepts_torch_tensors() -> None:
    pred, label = _maps()
    assert error_indices(torch.from_numpy(pred), torch.from_numpy(label), 3) == \
        pytest.approx(error_indices(pred, label, 3))


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        error_indices(np.zeros((2, 3)), np.zeros((3, 2)), 2)


def test_unknown_formula() -> None:
    with pytest.raises(ValueError, match="formula"):
        error_indices(np.zeros(2), np.zeros(2), 2, formula="fancy")


@pytest.mark.parametrize("r_fp, r_fn, gamma, expected", [
    (0.25, 0.75, 1.0, 3.0),
    (0.75, 0.25, 1.0, 1 / 3),
    (0.25, 0.75, 0.5, 3.0 ** 0.5),
    (0.5, 0.5, 2.0, 1.0),
    (0.01, 0.99, 1.0, 10.0),   # clamped high
    (0.99, 0.01, 1.0, 0.1),    # clamped low
    (0.0, 0.3, 1.0, 10.0),
    (0.3, 0.0, 1.0, 0.1),
    (0.0, 0.0, 1.0, 1.0),
])
def test_next_ratio(r_fp: float, r_fn: float, gamma: float, expected: float) -> None:
    assert next_ratio(r_fp, r_fn, gamma, (0.1, 10.0)) == pytest.approx(expected)


def test_next_ratio_neutral_clamped_into_bounds() -> None:
    assert next_ratio(0.0, 0.0, bounds=(2.0, 5.0)) == 2.0
    assert next_ratio(0.0, 0.0, bounds=(0.2, 0.5)) == 0.5


def test_next_ratio_bad_bounds() -> None:
    with pytest.raises(ValueError):
        next_ratio(0.5, 0.5, bounds=(2.0, 1.0))


def test_pos_fraction() -> None:
    assert pos_fraction(1.0) == 0.5
    assert pos_fraction(3.0) == pytest.approx(0.75)
    assert pos_fraction(0.0) == 0.0
