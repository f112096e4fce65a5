"""The TensorBoard events a run writes, read back the way TensorBoard reads them.

The rows are the worker's own (:meth:`trainer.steps.EpochStats.metrics_row`), so a key the report
plots but the worker never sends (the data-wait curve once went missing that way) fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainer.report import write_tensorboard
from trainer.steps import EpochStats


def _stats(epoch: int, step_s: float, wait_s: float) -> EpochStats:
    return EpochStats(epoch=epoch, loss=0.5 - 0.1 * epoch, steps=4, crops=8, positive_fraction=0.5,
                      step_seconds=step_s, wait_seconds=wait_s, ratio=1.0, generation=epoch)


def test_the_data_wait_scalar_is_written_from_the_workers_rows(tmp_path: Path) -> None:
    rows = [_stats(0, 3.0, 1.0).metrics_row(4.0, 0, 1.5), _stats(1, 9.0, 1.0).metrics_row(14.0, 0, 1.5)]
    val = [{"epoch": 1, "mean_dice": 0.7, "ratio": 1.2, "dice_per_class": [0.7]}]
    write_tensorboard(tmp_path, rows, val)

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert "train/wait_fraction" in events.Tags()["scalars"]
    wait = events.Scalars("train/wait_fraction")
    assert [e.step for e in wait] == [0, 1]
    assert [e.value for e in wait] == pytest.approx([0.25, 0.1])
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([0.5, 0.4])
    assert events.Scalars("val/mean_dice")[0].value == pytest.approx(0.7)


def test_the_row_carries_every_key_the_report_reads() -> None:
    row = _stats(2, 1.0, 0.0).metrics_row(7.5, 1, 2.0)
    assert row["wait_fraction"] == 0.0  # no wait at all, and no division by zero
    assert {"epoch", "loss", "step_seconds", "wait_seconds", "wait_fraction", "positive_fraction", "ratio",
            "time_s", "rank", "param_checksum"} <= row.keys()
    assert (row["epoch"], row["rank"], row["time_s"]) == (2, 1, 7.5)
