"""benchmarks/cpu_bf16.py: an fp32 row and a bf16 row, speed-ups against fp32, and the agreement line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.benchmark_modules import import_benchmarks


@pytest.fixture(autouse=True)
def _keep_threads():
    """The script sets the trainer's and the validation's thread counts; the session keeps its own."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_two_rows_fp32_first_and_the_agreement(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "small.yaml"
    cfg.write_text("sampler:\n  patch_size: [16, 16, 16]\ntraining:\n  channels: [4, 8]\n  strides: [2]\n"
                   "  num_res_units: 0\n  cpu_bf16: false\nvalidation:\n  roi_size: [16, 16, 16]\n  num_cpus: 0.5\n")
    (bench,) = import_benchmarks("cpu_bf16")
    bench.main(["--config", str(cfg), "--volume", "20", "20", "20", "--steps", "1", "--rounds", "1"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| bf16") or line.startswith("| none")]
    assert [r.split("|")[1].strip() for r in rows] == ["none (fp32)", "bf16"]
    assert rows[0].endswith("| 1.00x | 1.00x |")  # fp32 is the reference, whatever the config says
    assert "bf16 instructions:" in out and "agrees between fp32 and bf16" in out and "1 rounds" in out
