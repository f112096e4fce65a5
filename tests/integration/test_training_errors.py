"""A training that cannot work ends with a clear message, not a hang or a bare traceback."""

from __future__ import annotations

import threading
import time

import pytest

from cache_service.client import cache_actor_names, lookup, stop_caches
from common.config import config_from_dict
from common.errors import ConfigError, DataError
from trainer.launcher import LaunchOptions, TrainingFailedError, run_experiment
from tests.integration.test_training import tiny_config

pytestmark = pytest.mark.integration


@pytest.mark.timeout(60)
def test_missing_dataset_names_the_file(ray_cluster, stats_dir, tmp_path):
    with pytest.raises(DataError, match="dataset.json not found"):
        run_experiment(tiny_config(tmp_path / "nowhere", stats_dir), LaunchOptions(tmp_path / "o", show_progress=False))


@pytest.mark.timeout(60)
def test_more_workers_than_cpus(ray_cluster, demo_root, stats_dir, tmp_path):
    cfg = tiny_config(demo_root, stats_dir, num_workers=8, worker_num_cpus=1.0)
    with pytest.raises(ConfigError, match="need 8 CPUs but the cluster has 2"):
        run_experiment(cfg, LaunchOptions(tmp_path / "o", show_progress=False))


@pytest.mark.timeout(60)
def test_a_run_beside_which_the_cache_could_not_rotate_is_refused(ray_cluster, demo_root, stats_dir, tmp_path):
    cfg = tiny_config(demo_root, stats_dir, num_workers=1, worker_num_cpus=1.0)  # + 0.5 + the actor's 0.25
    cfg = cfg.replace(validation=cfg.validation.replace(num_cpus=0.5), cache=cfg.cache.replace(task_num_cpus=0.5))
    with pytest.raises(ConfigError, match=r"never rotate; set cache.task_num_cpus=0.125"):
        run_experiment(cfg, LaunchOptions(tmp_path / "o", show_progress=False))
    assert cache_actor_names(cfg.cache.namespace) == []  # refused before anything started


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_patch_larger_than_every_volume_fails_only_that_experiment(ray_cluster, demo_root, stats_dir, tmp_path):
    """The patch check is the consumer's: the shared cache quarantines nothing for one experiment's patch.

    It is found once the cache has filled, from the shapes of the volumes it prepared, before
    any step (the Ray Train worker started meanwhile ends without training), and names the
    config key the patch came from.
    """
    small = tiny_config(demo_root, stats_dir, epochs=1, num_workers=1)
    raw = small.to_dict()
    raw["sampler"]["patch_size"] = [64, 64, 64]
    raw["validation"]["roi_size"] = [64, 64, 64]
    big = config_from_dict(raw)
    try:
        too_big = "smaller than this experiment's patch \\(64, 64, 64\\).*lower sampler.patch_size"
        with pytest.raises(DataError, match=too_big):
            run_experiment(big, LaunchOptions(tmp_path / "big", show_progress=False))
        [name] = cache_actor_names(big.cache.namespace)
        assert lookup(name, big.cache.namespace).status().quarantined == []
        report = run_experiment(small, LaunchOptions(tmp_path / "small", show_progress=False))  # same cache
        assert report.epochs == 1
    finally:
        stop_caches(big.cache.namespace)


@pytest.mark.timeout(240)
def test_cache_that_disappears_mid_run(ray_cluster, demo_root, stats_dir, tmp_path):
    import ray

    cfg = tiny_config(demo_root, stats_dir, epochs=500, num_workers=1, max_failures=0)
    cfg = cfg.replace(cache=cfg.cache.replace(recover_timeout_s=10.0))  # stopped for good: consumers give up after 10 s

    def kill_cache_once_training() -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if list((tmp_path / "o" / "ray_results").glob("*")):  # Ray Train has started
                time.sleep(8)
                stop_caches(cfg.cache.namespace)
                return
            time.sleep(0.5)

    killer = threading.Thread(target=kill_cache_once_training, daemon=True)
    killer.start()
    start = time.monotonic()
    gave_up = "unavailable: did not come back within cache.recover_timeout_s=10s"
    with pytest.raises(TrainingFailedError, match=gave_up) as info:
        run_experiment(cfg, LaunchOptions(tmp_path / "o", show_progress=False))
    assert time.monotonic() - start < 200
    assert "Traceback" not in str(info.value)
    killer.join(timeout=5)
    assert ray.is_initialized()


@pytest.mark.timeout(300)
def test_a_non_finite_loss_stops_the_run_at_once_with_the_epoch_and_a_hint(ray_cluster, demo_root, stats_dir,
                                                                          tmp_path):
    """lr=1e30 blows the weights up to inf within the first epoch: the run ends there, and Ray Train does not
    restart the workers max_failures times to hit the same NaN again."""
    cfg = tiny_config(demo_root, stats_dir, epochs=20, lr=1e30, max_failures=3)
    start = time.monotonic()
    try:
        with pytest.raises(TrainingFailedError) as info:
            run_experiment(cfg, LaunchOptions(tmp_path / "o", show_progress=False))
    finally:
        stop_caches(cfg.cache.namespace)
    text = str(info.value)
    assert "not retried (NonFiniteLossError" in text and "non-finite" in text
    assert "in epoch 0" in text and "Lower the learning rate (training.lr=1e+30 now)" in text
    checkpoints = list((tmp_path / "o" / "ray_results").glob("*/checkpoint_*"))
    assert checkpoints == []  # it stopped in the first epoch and trained on nothing after
    assert time.monotonic() - start < 240
