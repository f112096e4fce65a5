"""``training.runner: in_process``: one worker and its validation in the caller's process, same results."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from cache_service.client import stop_caches
from tests.integration.test_training import _rows, tiny_config
from trainer.launcher import LaunchOptions, run_experiment

pytestmark = pytest.mark.integration


def _one_worker(demo_root: Path, stats_dir: Path, runner: str, **training: object):
    return tiny_config(demo_root, stats_dir, num_workers=1, runner=runner, deterministic=True, seed=3, **training)


@pytest.mark.timeout(300)
def test_an_in_process_run_validates_hands_the_ratio_over_and_resumes(ray_cluster, demo_root, stats_dir, tmp_path):
    cfg = _one_worker(demo_root, stats_dir, "in_process", epochs=3)
    out = tmp_path / "run"
    try:
        report = run_experiment(cfg, LaunchOptions(out, show_progress=False))
        train, val = _rows(out, "train"), _rows(out, "validation")
        assert report.epochs == 3 and [r["epoch"] for r in val] == [0, 1, 2]
        for e in range(1, 3):  # what validation published after epoch e-1 is what epoch e cropped with
            assert train[e]["ratio"] == pytest.approx(val[e - 1]["ratio"])
        with pytest.raises(ValueError):  # no validation actor was started for it
            ray.get_actor(f"validator-{report.experiment_id}", namespace=cfg.cache.namespace)
        assert not (out / "ray_results").exists()  # no Ray Train run
        kept = sorted(p.name for p in (out / "checkpoints").iterdir())
        assert kept == ["checkpoint_000001", "checkpoint_000002"]  # the newest two, as Ray Train keeps them
        resumed = run_experiment(cfg.replace(training=cfg.training.replace(epochs=5)),
                                 LaunchOptions(out, resume=True, show_progress=False))
    finally:
        stop_caches(cfg.cache.namespace)
    assert resumed.resumed_from_epoch == 3
    assert sorted({r["epoch"] for r in _rows(out, "train")}) == [3, 4]
    for name in ("report.json", "curves.png", "validation_case.png", "model.pt"):
        assert (out / name).is_file(), name


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_in_process_and_ray_train_give_the_same_losses(ray_cluster, demo_root, stats_dir, tmp_path):
    """The same loop either way: one deterministic worker sees the same crops and computes the same losses,
    each run on a cache of its own (the pool's order does not depend on which volume was prepared first)."""
    losses = {}
    for runner in ("in_process", "ray_train"):
        cfg = _one_worker(demo_root, stats_dir, runner, epochs=2)
        try:
            run_experiment(cfg, LaunchOptions(tmp_path / runner, show_progress=False))
        finally:
            stop_caches(cfg.cache.namespace)
        losses[runner] = [(r["epoch"], r["loss"]) for r in _rows(tmp_path / runner, "train")]
    assert len(losses["in_process"]) == 2
    assert losses["in_process"] == losses["ray_train"]
