"""One scoring for every consumer: what MONAI users hold in, MONAI's Dice and the paper's Eq. 5-6 out."""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from monai.transforms import AsDiscrete

from cache_service.sdk.protocol import validation_numbers
from common.config import SamplerConfig
from common.errors import ConfigError
from common.scoring import CaseScore, score, summarise, to_class_maps

C = 3  # background, organ, lesion


def _organ_with_lesion(shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(pred, label) class maps (X, Y, Z): the lesion is predicted as organ, the organ a little off."""
    label = np.zeros((12, 12, 12), np.int64)
    label[2:10, 2:10, 2:10] = 1
    label[4:6, 4:6, 4:7] = 2
    pred = np.zeros_like(label)
    pred[2 + shift:10, 2:10, 2:10] = 1  # the lesion's voxels come out as organ
    return pred, label


def _monai_dice(pred_maps: np.ndarray, label_maps: np.ndarray, reduction: str = "none") -> np.ndarray:
    """MONAI's DiceMetric(include_background=False) on batched one-hot (B, C, ...) built from (B, X, Y, Z) maps."""
    metric = DiceMetric(include_background=False, reduction=reduction)
    p = one_hot(torch.from_numpy(pred_maps)[:, None], C)
    y = one_hot(torch.from_numpy(label_maps)[:, None], C)
    metric(y_pred=p, y=y)
    return metric.aggregate().numpy()


# every form a MONAI user may hold for one case, built from its (X, Y, Z) class map
FORMS: dict[str, Callable[[np.ndarray], Any]] = {
    "map (X,Y,Z) numpy": lambda m: m,
    "map (1,X,Y,Z) torch": lambda m: torch.from_numpy(m)[None],
    "map (B,1,X,Y,Z) torch": lambda m: torch.from_numpy(m)[None, None],
    "map (1,X,Y,Z) uint8 numpy": lambda m: m[None].astype(np.uint8),
    "map (1,X,Y,Z) float MetaTensor": lambda m: MetaTensor(torch.from_numpy(m)[None].float()),
    "AsDiscrete(argmax) of logits": lambda m: AsDiscrete(argmax=True)(one_hot(torch.from_numpy(m)[None, None], C)[0]
                                                                     * 5.0 - 2.0),
    "one-hot (C,X,Y,Z) float torch": lambda m: one_hot(torch.from_numpy(m)[None, None], C)[0],
    "one-hot (C,X,Y,Z) MetaTensor": lambda m: MetaTensor(one_hot(torch.from_numpy(m)[None, None], C)[0]),
    "one-hot (C,X,Y,Z) bool numpy": lambda m: np.stack([m == c for c in range(C)]),
    "one-hot (B,C,X,Y,Z) torch": lambda m: one_hot(torch.from_numpy(m)[None, None], C),
    "AsDiscrete(argmax, to_onehot)": lambda m: AsDiscrete(argmax=True, to_onehot=C)(
        one_hot(torch.from_numpy(m)[None, None], C)[0]),
}


@pytest.mark.parametrize("pred_form", FORMS)
@pytest.mark.parametrize("label_form", ["map (1,X,Y,Z) uint8 numpy", "one-hot (C,X,Y,Z) float torch",
                                        "map (B,1,X,Y,Z) torch"])
def test_every_form_scores_as_monai_dice_metric(pred_form: str, label_form: str) -> None:
    pred, label = _organ_with_lesion(shift=1)
    [case] = score(FORMS[pred_form](pred), FORMS[label_form](label), C)
    expected = _monai_dice(pred[None], label[None])[0]
    assert case.dice == pytest.approx(tuple(expected), abs=1e-6)
    assert case.dice[1] == 0.0  # the lesion was missed, whatever form it came in


def test_one_hot_is_no_longer_misread() -> None:
    """Issue 16 item 1: one-hot (C, X, Y, Z) used to be read as a class map and score the lesion 1.0."""
    pred, label = _organ_with_lesion()
    as_maps = score(pred, label, C)[0]
    as_one_hot = score(FORMS["one-hot (C,X,Y,Z) float torch"](pred), FORMS["one-hot (C,X,Y,Z) float torch"](label), C)
    assert as_one_hot == [as_maps]
    assert as_maps.dice[0] == pytest.approx(2 * 500 / (512 + 500)) and as_maps.dice[1] == 0.0


def test_batched_inputs_are_one_case_each() -> None:
    pairs = [_organ_with_lesion(shift) for shift in (0, 1, 3)]
    preds, labels = np.stack([p for p, _ in pairs]), np.stack([y for _, y in pairs])
    pred_in, label_in = one_hot(torch.from_numpy(preds)[:, None], C), torch.from_numpy(labels)[:, None]
    cases = score(pred_in, label_in, C)
    assert len(cases) == 3
    np.testing.assert_allclose([c.dice for c in cases], _monai_dice(preds, labels), atol=1e-6)
    metric = DiceMetric(include_background=False, reduction="none", num_classes=C)  # the very same tensors
    metric(y_pred=pred_in, y=label_in)
    np.testing.assert_allclose([c.dice for c in cases], metric.aggregate().numpy(), atol=1e-6)
    result = summarise(0, cases, C, SamplerConfig(), 1.0)
    np.testing.assert_allclose(result.dice_per_class, _monai_dice(preds, labels, "mean_batch"), atol=1e-6)
    assert result.mean_dice == pytest.approx(float(np.mean(result.dice_per_class)))
    assert list(result.case_dice) == ["0", "1", "2"]


def test_error_indices_follow_eq_5_and_6_by_hand() -> None:
    label = np.array([[[0, 1, 1, 2]]])
    pred = np.array([[[0, 1, 0, 0]]])
    # class 1: p = {1}, g = {1, 2}: TP 1, FP 0, FN 1, union sum(p + g - p*g) = 2 -> r_FP = 1/2, r_FN = 2/2
    # class 2: p = {}, g = {3}: TP 0, FP 0, FN 1, union 1 -> r_FP = 0/1, r_FN = 1/1
    [stable] = score(pred, label, C, "stable")
    assert stable == CaseScore((pytest.approx(2 / 3), 0.0), pytest.approx((1 / 2 + 0) / 2), pytest.approx(1.0))
    # plain (Eq. 2-3): FP / (FP + FN) and FN / (FP + FN): class 1 -> (0, 1), class 2 -> (0, 1)
    [plain] = score(pred, label, C, "plain")
    assert (plain.r_fp, plain.r_fn) == (0.0, 1.0)
    result = summarise(5, [stable], C, SamplerConfig(), current_ratio=1.0)
    assert result.ratio == pytest.approx(1.0 / 0.25)  # Eq. 4: r' = r_FN / r_FP, within the bounds (0.1, 10)
    assert result.epoch == 5 and result.r_fp == pytest.approx(0.25)
    assert summarise(5, [stable], C, SamplerConfig(adaptive=False), current_ratio=0.7).ratio == 0.7


def test_no_case_is_the_neutral_result() -> None:
    empty = summarise(2, [], C, SamplerConfig(), current_ratio=3.0)
    assert (empty.dice_per_class, empty.mean_dice, empty.r_fp, empty.r_fn, empty.ratio) == ((0.0, 0.0), 0.0, 1, 1, 1)
    with pytest.raises(ValueError, match="1 case ids for 0 scored cases"):
        summarise(2, [], C, SamplerConfig(), 1.0, case_ids=["a"])


@pytest.mark.parametrize("bad", [
    torch.softmax(torch.randn(C, 4, 4, 4), dim=0),  # probabilities
    torch.randn(1, C, 4, 4, 4),  # raw logits, batched
    np.full((1, 4, 4, 4), 0.5),  # a thresholdless sigmoid output
])
def test_logits_and_probabilities_are_refused_with_the_argmax_hint(bad: Any) -> None:
    with pytest.raises(ConfigError, match=r"'pred' = .* not logits or probabilities: take the argmax .*AsDiscrete"):
        to_class_maps(bad, C, "pred")


def test_several_channels_that_are_not_one_hot_are_refused_with_the_hint() -> None:
    multi_label = np.zeros((C, 4, 4, 4), np.float32)
    multi_label[1:, :2] = 1  # two classes on at once
    with pytest.raises(ConfigError, match=r"channel of size 3 is neither a class map.*take the argmax"):
        to_class_maps(multi_label, C, "label")
    batch_without_channel = np.zeros((4, 4, 4, 4), np.int64)  # (B, X, Y, Z): ambiguous, never guessed
    with pytest.raises(ConfigError, match=r"needs its channel, x\[:, None\]"):
        to_class_maps(batch_without_channel, C)


def test_ambiguity_rule_a_leading_dim_of_num_classes_that_is_one_hot() -> None:
    """(2, X, Y, Z) with num_classes=2: one-hot when 0/1 and summing to 1 over it; otherwise refused."""
    organ = np.zeros((4, 4, 4), np.int64)
    organ[1:3] = 1
    np.testing.assert_array_equal(to_class_maps(np.stack([1 - organ, organ]), 2)[0], organ)
    with pytest.raises(ConfigError, match="neither a class map"):
        to_class_maps(np.stack([organ, organ]), 2)


def test_wrong_classes_shapes_and_ranks_say_what_is_accepted() -> None:
    with pytest.raises(ConfigError, match=r"'label' = .*values in \[0, 3\].*class values 0\.\.2 \(num_classes=3\)"):
        to_class_maps(np.array([[[0, 1, 3]]]), C, "label")
    with pytest.raises(ConfigError, match=r"is invalid: class maps \(X, Y, Z\), \(1, X, Y, Z\)"):
        to_class_maps(np.zeros((4, 4)), C)
    with pytest.raises(ConfigError, match="the same cases and spatial shape for pred and label"):
        score(np.zeros((4, 4, 4), np.int64), np.zeros((4, 4, 5), np.int64), C)


def test_the_sdks_validation_numbers_score_mixed_forms_and_lists() -> None:
    """Experiment.report_validation's path: a list of cases, each in its own form, one result."""
    pairs = [_organ_with_lesion(shift) for shift in (0, 2)]
    preds = [FORMS["one-hot (C,X,Y,Z) MetaTensor"](pairs[0][0]), FORMS["map (X,Y,Z) numpy"](pairs[1][0])]
    labels = [FORMS["map (1,X,Y,Z) uint8 numpy"](pairs[0][1]), FORMS["one-hot (B,C,X,Y,Z) torch"](pairs[1][1])]
    result = validation_numbers(preds, labels, C, SamplerConfig(), current_ratio=1.0, epoch=4)
    maps = np.stack([p for p, _ in pairs]), np.stack([y for _, y in pairs])
    np.testing.assert_allclose(result.dice_per_class, _monai_dice(*maps, "mean_batch"), atol=1e-6)
    assert result == summarise(4, score(maps[0][:, None], maps[1][:, None], C), C, SamplerConfig(), 1.0)


def test_read_only_volumes_from_the_object_store_score_without_a_warning() -> None:
    pred, label = _organ_with_lesion()
    cached = label[None].astype(np.uint8)
    cached.flags.writeable = False  # what ray.get hands out for a cached validation volume
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "NumPy array is not writable" would fail here
        [case] = score(pred, cached, C)
    assert case == score(pred, label, C)[0]
