"""The time-to-Dice benchmark's bookkeeping (nothing is trained): milestones, speed-ups, pass-length epochs."""

from __future__ import annotations

import pytest

from common.catalog import load_catalog
from common.config import load_config
from common.demo_data import make_demo_data
from tests.benchmark_modules import import_benchmarks


@pytest.fixture(scope="module")
def ttd():
    return import_benchmarks("arm_result", "time_to_dice")


def _arm(arm_result, name, ttt, history):
    return arm_result.ArmResult(name, ttt is not None, ttt, None, max(d for _, d in history), (0.9, 0.4), 2, 10,
                                300.0, 0.0, 0.5, 0.3, 20.0, (1.0, 2.0), history)


def test_milestones_and_speed_up(ttd):
    arm_result, time_to_dice = ttd
    base = _arm(arm_result, "baseline", 200.0, ((100.0, 0.55), (200.0, 0.72)))
    full = _arm(arm_result, "full", 50.0, ((20.0, 0.62), (50.0, 0.75)))
    assert full.time_to(0.5) == 20.0 and full.time_to(0.7) == 50.0 and full.time_to(0.8) is None
    table = time_to_dice.format_table([base, full], 0.7, 300.0, (0.5, 0.6, 0.7))
    assert "| full | yes | 50 |" in table and "4.0x" in table and "20 / 20 / 50" in table
    missed = _arm(arm_result, "baseline", None, ((100.0, 0.3),))
    assert ">= 6.0x (baseline missed)" in time_to_dice.format_table([missed, full], 0.7, 300.0)


def test_pass_steps_cover_the_training_set_per_worker(ttd, tmp_path):
    _, time_to_dice = ttd
    make_demo_data(tmp_path, cases=10, size=16)
    cfg = load_config(None, [f"data.dataset_dir={tmp_path}", "data.val_fraction=0.2", "training.num_workers=2",
                             "sampler.samples_per_volume=3", "training.batch_size=2"])
    catalog = load_catalog(tmp_path, cfg.data)  # 8 training cases: 4 per worker, 12 crops, 6 steps
    assert time_to_dice.pass_steps(cfg, catalog) == 6
    assert "8 training / 2 validation cases" in time_to_dice.regime(cfg, catalog)


def test_step_time_with_and_without_a_validation_beside(ttd):
    _, time_to_dice = ttd
    rows = [{"kind": "train", "rank": 0, "epoch": e, "time_s": 10.0 * (e + 1), "step_seconds": s, "steps": 10}
            for e, s in enumerate([9.0, 2.0, 6.0, 8.0, 3.0])]
    rows += [{"kind": "train", "rank": 1, "epoch": 1, "time_s": 20.0, "step_seconds": 99.0, "steps": 10},
             {"kind": "validation", "time_s": 38.0, "seconds": 14.0},  # 24-38: 6 s of epoch 2 (20-30), 8 s of 3
             {"kind": "validation", "time_s": 50.0, "seconds": 3.0}]  # 47-50: 3 s of epoch 4 (40-50), too little
    # epoch 0 has no recorded start; epoch 1 (10-20) none beside; 2 (20-30) 60 %; 3 (30-40) 80 %; 4 (40-50) 30 %
    assert time_to_dice.step_s_beside(rows) == (pytest.approx((6.0 + 8.0) / 20), pytest.approx(2.0 / 10))
    assert time_to_dice.step_s_beside(rows[:1]) == (None, None)  # one epoch: no start recorded
    arm_result, _ = ttd
    full = _arm(arm_result, "full", 50.0, ((20.0, 0.62),))
    full.step_s_beside = (0.7, 0.35)
    assert "| 0.30 | 0.70 / 0.35 |" in time_to_dice.format_table([full], 0.6, 300.0)


def test_steps_to_target_count_through_the_epoch_that_validated_above_it(ttd):
    _, time_to_dice = ttd
    rows = [{"kind": "train", "rank": 0, "epoch": e, "time_s": 10.0 * (e + 1), "step_seconds": 2.0, "steps": 10}
            for e in range(5)]
    rows += [{"kind": "train", "rank": 1, "epoch": 0, "time_s": 10.0, "step_seconds": 9.0, "steps": 10},
             {"kind": "validation", "epoch": 0, "time_s": 14.0, "mean_dice": 0.3},
             # epoch 1's weights reach the target, but the result comes after epoch 2 has ended (at 30 s)
             {"kind": "validation", "epoch": 1, "time_s": 33.0, "mean_dice": 0.65},
             {"kind": "validation", "epoch": 3, "time_s": 45.0, "mean_dice": 0.7}]
    assert time_to_dice.step_counts(rows, 0.6) == (50, 20, pytest.approx(0.2))
    assert time_to_dice.step_counts(rows, 0.8) == (50, None, pytest.approx(0.2))


def test_seed_summary_medians_and_ratio_to_monai(ttd):
    """Seed 1 of `full` missed: it counts as the limit, which does not move a median of three below it."""
    arm_result, _ = ttd
    (seed_summary,) = import_benchmarks("seed_summary")
    hist = ((10.0, 0.7),)
    runs = [(0, _arm(arm_result, "monai-fast", 160.0, hist)), (0, _arm(arm_result, "full", 80.0, hist)),
            (1, _arm(arm_result, "monai-fast", 170.0, hist)), (1, _arm(arm_result, "full", None, ((5.0, 0.2),))),
            (2, _arm(arm_result, "monai-fast", 150.0, hist)), (2, _arm(arm_result, "full", 100.0, hist))]
    table = seed_summary.format_seed_summary(runs, 360.0, "monai-fast")
    assert "| monai-fast | 160 | 170 | 150 | 160 |" in table and "| 1.00x |" in table
    assert "| full | 80 | not in 360 | 100 | 100 |" in table and "| 1.60x |" in table
    # two seeds of three missing: the median is the limit, a lower bound
    assert seed_summary.median_time([runs[3][1], runs[3][1], runs[1][1]], 360.0) == (360.0, True)
    assert seed_summary.median_time([runs[1][1], runs[5][1]], 360.0) == (90.0, False)
    assert seed_summary.median_time([runs[1][1], runs[3][1]], 360.0) == (220.0, True)
    missed_ref = [(0, _arm(arm_result, "monai-fast", None, ((5.0, 0.2),))), (0, _arm(arm_result, "full", 90.0, hist))]
    assert "| >= 4.00x |" in seed_summary.format_seed_summary(missed_ref, 360.0, "monai-fast")
