"""The baseline arm (``cache.enabled=false``): no cache actor at all, and it still trains and validates."""

from __future__ import annotations

import json

import pytest

from cache_service.client import cache_actor_names, stop_caches
from tests.integration.test_training import tiny_config
from trainer.launcher import LaunchOptions, run_experiment

pytestmark = pytest.mark.integration


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_cache_disabled_run_makes_no_cache_and_hands_the_ratio_over(ray_cluster, demo_root, stats_dir, tmp_path):
    cfg = tiny_config(demo_root, stats_dir, deterministic=True, epochs=2, loader_workers=1)
    cfg = cfg.replace(cache=cfg.cache.replace(enabled=False))
    try:
        report = run_experiment(cfg, LaunchOptions(tmp_path / "run", show_progress=False))
        assert cache_actor_names(cfg.cache.namespace) == []  # nothing was created, nothing filled
    finally:
        stop_caches(cfg.cache.namespace)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = sorted((r for r in rows if r["kind"] == "train" and r["rank"] == 0), key=lambda r: r["epoch"])
    val = [r for r in rows if r["kind"] == "validation"]
    assert report.epochs == 2 and report.cache_fill_seconds == 0.0 and len(val) == 2
    assert all(r["steps"] > 0 and r["wait_seconds"] > 0 for r in train)
    assert 0.0 <= report.best_mean_dice <= 1.0 and (tmp_path / "run" / "model.pt").is_file()
    # without a registry the workers take the validation actor's ratio: epoch 1 uses what epoch 0 produced
    assert train[0]["ratio"] == cfg.sampler.initial_ratio
    assert train[1]["ratio"] == pytest.approx(val[0]["ratio"])
