"""Training end to end on the session's local Ray: DDP in step, ratio hand-over, determinism, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from cache_service.client import stop_caches
from common.config import ExperimentConfig, config_from_dict
from trainer.launcher import LaunchOptions, run_experiment

pytestmark = pytest.mark.integration


def tiny_config(data: Path, stats_dir: Path, **training: Any) -> ExperimentConfig:
    """Two gloo workers on a 2-CPU cluster, a 4-8 U-Net, 16^3 crops, every item cached (no rotation)."""
    return config_from_dict({
        "name": "t",
        "data": {"dataset_dir": str(data), "val_fraction": 0.34},
        "preprocessing": {"spacing": [1.5, 1.5, 1.5]},
        "cache": {"stats_dir": str(stats_dir), "task_num_cpus": 0.25, "namespace": f"train-{uuid.uuid4().hex[:6]}",
                  "replace_workers": 1, "disk_dir": None, "state_dir": str(stats_dir / "state")},
        "sampler": {"patch_size": [16, 16, 16], "samples_per_volume": 2},
        "augmentation": {"flip_prob": 0.5, "shift_prob": 0.5},
        "training": {"num_workers": 2, "worker_num_cpus": 0.4, "channels": [4, 8], "strides": [2],
                     "num_res_units": 0, "batch_size": 2, "lr": 0.01, "target_dice": 1.0, "epochs": 3,
                     "checkpoint_every": 1, **training},
        "validation": {"roi_size": [16, 16, 16], "num_cpus": 0.2, "overlap": 0.0},
    })


def _rows(out: Path, kind: str) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.mark.timeout(240)
def test_ddp_replicas_in_step_and_ratio_reaches_next_epoch(ray_cluster, demo_root, stats_dir, tmp_path):
    cfg = tiny_config(demo_root, stats_dir, deterministic=True)
    try:
        report = run_experiment(cfg, LaunchOptions(tmp_path / "run", show_progress=False))
    finally:
        stop_caches(cfg.cache.namespace)
    train, val = _rows(tmp_path / "run", "train"), _rows(tmp_path / "run", "validation")
    assert report.epochs == 3 and len(val) == 3
    for epoch in range(3):
        ranks = {r["rank"]: r for r in train if r["epoch"] == epoch}
        assert set(ranks) == {0, 1}
        assert ranks[0]["param_checksum"] == pytest.approx(ranks[1]["param_checksum"], rel=0, abs=1e-9)
        assert ranks[0]["loss"] != ranks[1]["loss"] or epoch > 0  # different shards, same weights
    # the ratio the validation actor published after epoch e is what the workers used in epoch e + 1
    rank0 = sorted((r for r in train if r["rank"] == 0), key=lambda r: r["epoch"])
    assert rank0[0]["ratio"] == cfg.sampler.initial_ratio
    for e in range(1, 3):
        assert rank0[e]["ratio"] == pytest.approx(val[e - 1]["ratio"])
    for name in ("report.json", "curves.png", "validation_case.png", "model.pt"):
        assert (tmp_path / "run" / name).is_file(), name
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.timeout(300)
def test_deterministic_runs_give_identical_losses(ray_cluster, demo_root, stats_dir, tmp_path):
    cfg = tiny_config(demo_root, stats_dir, deterministic=True, seed=7, epochs=2)
    try:
        losses = []
        for run in ("a", "b"):
            run_experiment(cfg, LaunchOptions(tmp_path / run, show_progress=False))
            rows = sorted(_rows(tmp_path / run, "train"), key=lambda r: (r["epoch"], r["rank"]))
            losses.append([(r["epoch"], r["rank"], r["loss"]) for r in rows])
    finally:
        stop_caches(cfg.cache.namespace)
    assert len(losses[0]) == 4
    assert losses[0] == losses[1]


@pytest.mark.timeout(240)
def test_the_last_epoch_is_validated_even_when_a_validation_is_still_running(ray_cluster, demo_root, stats_dir,
                                                                             tmp_path):
    """One-step epochs and a slow validation (8^3 windows at stride 2, thousands per case): validations fall
    due while one runs and are skipped, but the last epoch's weights are what the run ends with, so
    that one waits its turn."""
    cfg = tiny_config(demo_root, stats_dir, epochs=5, steps_per_epoch=1, checkpoint_every=100)
    cfg = cfg.replace(validation=cfg.validation.replace(roi_size=(8, 8, 8), overlap=0.75, interval=1))
    try:
        report = run_experiment(cfg, LaunchOptions(tmp_path / "run", show_progress=False))
    finally:
        stop_caches(cfg.cache.namespace)
    validated = [r["epoch"] for r in _rows(tmp_path / "run", "validation")]
    assert report.epochs == 5 and validated[-1] == 4, validated


@pytest.mark.timeout(300)
def test_killed_run_resumes_from_its_checkpoint(ray_cluster, demo_root, stats_dir, tmp_path):
    cfg = tiny_config(demo_root, stats_dir, epochs=40)
    out = tmp_path / "run"
    config_file = tmp_path / "run.yaml"  # the run's own config: `train` without --config would plan first
    config_file.write_text(yaml.safe_dump(cfg.to_dict()))
    cmd = [sys.executable, "-m", "trainer.cli", "train", "--data", str(demo_root), "--out", str(out),
           "--address", ray_cluster, "--config", str(config_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not list((out / "ray_results").glob("*/checkpoint_*")):
            assert proc.poll() is None, "training ended before writing a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.5)
        time.sleep(1.0)  # let the checkpoint directory finish
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        from trainer.checkpoints import load_checkpoint, newest_loadable
        checkpoint = newest_loadable(out)
        assert checkpoint is not None
        saved_epoch = load_checkpoint(checkpoint.path)["epoch"]
        report = run_experiment(cfg.replace(training=cfg.training.replace(epochs=saved_epoch + 2)),
                                LaunchOptions(out, resume=True, show_progress=False))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        stop_caches(cfg.cache.namespace)
    assert report.resumed_from_epoch == saved_epoch + 1
    epochs = sorted({r["epoch"] for r in _rows(out, "train")})
    assert epochs == [saved_epoch + 1]
    assert np.isfinite(report.best_mean_dice)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_ddp_run_with_the_device_crop_path_matches_the_host_path(ray_cluster, demo_root, stats_dir, tmp_path):
    """sampler.device=cuda on a CPU run: the same code cuts crops on the workers' device (here the CPU),
    and since it delivers the host path's crops, two DDP ranks train to the very same losses."""
    cfg = tiny_config(demo_root, stats_dir, deterministic=True, seed=3, epochs=2)
    losses = {}
    try:
        for where in ("cpu", "cuda"):
            run_cfg = cfg.replace(sampler=cfg.sampler.replace(device=where))
            run_experiment(run_cfg, LaunchOptions(tmp_path / where, show_progress=False))
            rows = sorted(_rows(tmp_path / where, "train"), key=lambda r: (r["epoch"], r["rank"]))
            losses[where] = [(r["epoch"], r["rank"], r["loss"]) for r in rows]
    finally:
        stop_caches(cfg.cache.namespace)
    assert len(losses["cpu"]) == 4
    assert losses["cuda"] == losses["cpu"]
