"""benchmarks/step_alloc.py: the measured step in a process, in the main thread and in a thread of its own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.benchmark_modules import import_benchmarks


@pytest.fixture(autouse=True)
def _keep_threads():
    """The script sets the trainer's thread count; the rest of the session keeps its own."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("in_thread", [False, True])
def test_steps_report_time_cpu_and_memory(tmp_path: Path, in_thread: bool) -> None:
    cfg = tmp_path / "small.yaml"
    cfg.write_text("training:\n  channels: [4, 8]\n  strides: [2]\n  num_res_units: 0\n  batch_size: 1\n"
                   "sampler:\n  patch_size: [16, 16, 16]\n")
    (bench,) = import_benchmarks("step_alloc")
    row = bench._steps(str(cfg), 7, in_thread)
    assert set(row) == {"step_s", "user_s", "system_s", "peak_rss_mib"}
    assert 0 < row["step_s"] < 5 and row["user_s"] > 0 and row["peak_rss_mib"] > 50
