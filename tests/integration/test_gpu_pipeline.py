"""benchmarks/gpu_pipeline.py with device "cpu": the GPU check's code runs before it first meets a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmark_modules import import_benchmarks


@pytest.mark.slow
def test_gpu_pipeline_smoke_on_cpu(ray_cluster: str, tmp_path: Path) -> None:
    (gpu_pipeline,) = import_benchmarks("gpu_pipeline")
    out = tmp_path / "gpu_check.md"
    assert gpu_pipeline.main(["--device", "cpu", "--quick", "--out", str(out),
                              "--set", f"cache.stats_dir={tmp_path / 'stats'}"]) == 0
    text = out.read_text()
    for section in ("## plan", "sampler.patch_size", "## crops/s to cpu", "GPU crop path", "MONAI fast recipe",
                    "## demo to target Dice", "| on |", "| off |"):
        assert section in text
    rates = [float(line.split("|")[2]) for line in text.splitlines() if line.startswith("| ") and "path" in line
             and "crops/s" not in line]
    assert len(rates) == 2 and all(r > 0 for r in rates)
