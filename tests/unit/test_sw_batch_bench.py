"""benchmarks/sw_batch.py: one table row per sw_batch_size, and a refusal when batching changes the output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.benchmark_modules import import_benchmarks


@pytest.fixture(autouse=True)
def _keep_threads():
    """The script sets the validation actor's thread count; the rest of the session keeps its own."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "small.yaml"
    cfg.write_text("training:\n  channels: [4, 8]\n  strides: [2]\n  num_res_units: 0\n"
                   "validation:\n  roi_size: [16, 16, 16]\n  overlap: 0.25\n  num_cpus: 0.5\n")
    return cfg


def test_one_row_per_size_with_the_window_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (bench,) = import_benchmarks("sw_batch")
    bench.main(["--config", str(_config(tmp_path)), "--volume", "28", "28", "20", "--sizes", "1", "3",
                "--repeats", "1"])
    out = capsys.readouterr().out
    # 28 with a 16-voxel window at overlap 0.25 (step 12): 2 windows per axis; 20: 2 -> 8 windows
    assert "8 windows" in out and "1 thread(s)" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [r.split("|")[1].strip() for r in rows] == ["1", "3"] and rows[0].endswith("| 1.00x |")


def test_a_size_that_changes_the_output_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (bench,) = import_benchmarks("sw_batch")
    real = bench.sliding_window_inference
    monkeypatch.setattr(bench, "sliding_window_inference",
                        lambda x, sw_batch_size, **kw: real(x, sw_batch_size=sw_batch_size, **kw) + (sw_batch_size > 1))
    with pytest.raises(SystemExit, match="sw_batch_size 2 gave a different output"):
        bench.main(["--config", str(_config(tmp_path)), "--volume", "20", "20", "20", "--sizes", "1", "2",
                    "--repeats", "1"])
