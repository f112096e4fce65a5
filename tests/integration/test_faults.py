"""SIGKILL of the cache actor, one Ray Train worker or the validation actor mid-run: the run finishes.

Each test runs ``smartcache train`` as a subprocess on the session's Ray, kills one process
by PID once a few epochs are trained, and checks the run exits 0, trains every epoch,
writes its report and lists the fault there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import ray

from cache_service.client import attach, stop_caches
from common.catalog import fingerprint, load_catalog
from common.config import ExperimentConfig
from tests.integration.fault_runs import (alive_actor_pids, experiment_id, kill, start_train, trained_epochs,
                                          validated_epochs, wait_for)
from tests.integration.test_training import tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EPOCHS = 8
KILL_AT = 3  # epochs trained before the kill


def fault_config(demo_root: Path, stats_dir: Path, tmp_path: Path) -> ExperimentConfig:
    cfg = tiny_config(demo_root, stats_dir, epochs=EPOCHS, checkpoint_every=2)
    return cfg.replace(cache=cfg.cache.replace(disk_dir=str(tmp_path / "tier"), recover_timeout_s=120.0),
                       validation=cfg.validation.replace(interval=1))


def run_with_kill(cfg: ExperimentConfig, tmp_path: Path, address: str, find_pid: Any) -> tuple[dict, Path, set]:
    """Train, SIGKILL one process after KILL_AT epochs; returns the report, the run folder and the
    epochs validated before the kill."""
    out = tmp_path / "run"
    proc = start_train(cfg, out, address, tmp_path / "train.log")
    try:
        wait_for(lambda: trained_epochs(out) >= KILL_AT, 240, f"{KILL_AT} trained epochs", proc)
        pid = find_pid(out)
        validated_before = validated_epochs(out)
        kill(pid)
        rc = proc.wait(timeout=420)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "train.log").read_text()
    assert rc == 0, log[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["epochs"] == EPOCHS, log[-2000:]
    return report, out, validated_before


def _cache_pid(cfg: ExperimentConfig) -> int:
    fp = fingerprint(load_catalog(cfg.data.dataset_dir, cfg.data), cfg.preprocessing)
    return int(attach(fp, cfg.cache.namespace).ping()["pid"])


@pytest.mark.timeout(600)
def test_cache_actor_killed_mid_run(ray_cluster, demo_root, stats_dir, tmp_path):
    cfg = fault_config(demo_root, stats_dir, tmp_path)
    try:
        report, _, _ = run_with_kill(cfg, tmp_path, ray_cluster, lambda out: _cache_pid(cfg))
        assert report["restarts"].get("cache") == 1, report["faults"]
        fault = next(f for f in report["faults"] if f["kind"] == "cache")
        assert "restarted" in fault["cause"] and fault["seconds_lost"] is not None
        fp = fingerprint(load_catalog(cfg.data.dataset_dir, cfg.data), cfg.preprocessing)
        status = attach(fp, cfg.cache.namespace).status()
        assert status.restarts == 1 and status.items_cached == status.cache_num and not status.quarantined
        assert status.disk_hits >= status.items_cached  # warmed again from the disk tier, not by preparing
    finally:
        stop_caches(cfg.cache.namespace)


@pytest.mark.timeout(600)
def test_trainer_worker_killed_mid_run(ray_cluster, demo_root, stats_dir, tmp_path):
    cfg = fault_config(demo_root, stats_dir, tmp_path)
    try:
        report, out, _ = run_with_kill(cfg, tmp_path, ray_cluster, lambda out: alive_actor_pids("RayTrainWorker")[-1])
        assert report["restarts"].get("trainer") == 1, report["faults"]
        fault = next(f for f in report["faults"] if f["kind"] == "trainer")
        assert fault["epoch"] is not None and fault["epoch"] % 2 == 0  # resumed after a checkpoint (every 2)
        assert fault["seconds_lost"] > 0
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        epochs = sorted(r["epoch"] for r in rows if r["kind"] == "train" and r["rank"] == 0)
        assert epochs == list(range(EPOCHS))  # repeated epochs replace their first rows: no gap, no doubles
    finally:
        stop_caches(cfg.cache.namespace)


@pytest.mark.timeout(600)
def test_validation_actor_killed_mid_run(ray_cluster, demo_root, stats_dir, tmp_path):
    cfg = fault_config(demo_root, stats_dir, tmp_path)

    def validator_pid(out: Path) -> int:
        handle = ray.get_actor(f"validator-{experiment_id(out)}", namespace=cfg.cache.namespace)
        return int(ray.get(handle.pid.remote()))

    try:
        report, out, before = run_with_kill(cfg, tmp_path, ray_cluster, validator_pid)
        assert report["restarts"].get("validator") == 1, report["faults"]
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        validated = sorted(r["epoch"] for r in rows if r["kind"] == "validation")
        assert before and before <= set(validated)  # the history before the kill survived the restart
        assert max(validated) > max(before)  # and validation went on afterwards
        assert (out / "model.pt").is_file() and report["best_epoch"] is not None
    finally:
        stop_caches(cfg.cache.namespace)
