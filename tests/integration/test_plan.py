"""End to end: `smartcache plan` on demo data fingerprints with Ray tasks, stores it, probes, writes a config."""

from __future__ import annotations

from pathlib import Path

from common.catalog import load_catalog
from common.config import load_config
from common.cpu_features import native_bf16
from common.planning.fingerprint import fingerprint_path
from trainer.cli import main
from trainer.plan_inputs import dataset_key, probe_machine


def test_plan_on_demo_data_writes_a_config_train_takes(ray_cluster: str, demo_root: Path, tmp_path: Path,
                                                       capsys) -> None:
    stats = tmp_path / "stats"
    out = tmp_path / "plan.yaml"
    assert main(["plan", "--data", str(demo_root), "--out", str(out), "--set", f"cache.stats_dir={stats}"]) == 0
    printed = capsys.readouterr().out
    stored = fingerprint_path(stats, dataset_key(load_catalog(demo_root)))
    assert stored.is_file()
    cfg = load_config(out, [f"data.dataset_dir={demo_root}"])
    assert cfg.training.use_gpu is False and cfg.preprocessing.normalization == "ct"
    assert "sampler.patch_size" in printed and "reason" in printed
    # the second plan reads the stored fingerprint back instead of recomputing it
    before = stored.stat().st_mtime_ns
    assert main(["plan", "--data", str(demo_root), "--out", str(out), "--set", f"cache.stats_dir={stats}"]) == 0
    assert stored.stat().st_mtime_ns == before
    machine = probe_machine()
    assert machine.total_cpus == 2 and machine.object_store_bytes > 0 and not machine.has_gpu
    assert machine.cpu_bf16 is native_bf16()  # read on the node by a task there: this machine's own answer
