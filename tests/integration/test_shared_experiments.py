"""Two `smartcache train --address` drivers with different learning rates share one cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cache_service.api import ApiSettings, create_app
from cache_service.api.ray_source import RaySource
from common.demo_data import make_demo_data

LOOPBACK = "http://127.0.0.1"  # the API answers loopback Host headers only (DNS rebinding)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _plasma_bytes(address: str) -> int:
    """Bytes held in the object store of this (single-node) cluster, as the raylet reports them."""
    import re

    from ray._private.internal_api import memory_summary

    text = memory_summary(address=address, stats_only=True)
    match = re.search(r"Plasma memory usage ([0-9.]+) (KiB|MiB|GiB)", text)
    if match is None:
        return 0
    return int(float(match.group(1)) * {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[match.group(2)])


def _train_cmd(data: Path, out: Path, address: str, namespace: str, stats_dir: Path, lr: float) -> list[str]:
    sets = {"cache.namespace": namespace, "cache.stats_dir": str(stats_dir), "cache.task_num_cpus": 0.25,
            "data.val_fraction": 0.25, "sampler.patch_size": "[16,16,16]", "validation.roi_size": "[32,32,32]",
            "validation.num_cpus": 0.2, "training.num_workers": 1, "training.worker_num_cpus": 0.4,
            "training.channels": "[4,8]", "training.strides": "[2]", "training.num_res_units": 0,
            "training.epochs": 25, "training.target_dice": 1.0, "training.lr": lr,
            "training.checkpoint_every": 100}
    return [sys.executable, "-m", "trainer.cli", "train", "--data", str(data), "--out", str(out),
            "--address", address, *[f"--set={k}={v}" for k, v in sets.items()]]


def test_two_experiments_share_one_cache(ray_cluster, stats_dir, tmp_path):
    data = make_demo_data(tmp_path / "data", cases=8, size=48, seed=5)  # ~200-500 KB volumes: in plasma
    namespace = f"shared-{uuid.uuid4().hex[:6]}"
    procs = [subprocess.Popen(_train_cmd(data, tmp_path / f"run{i}", ray_cluster, namespace, stats_dir, lr),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
             for i, lr in enumerate((1e-3, 1e-2))]
    client = TestClient(create_app(RaySource(namespace), ApiSettings(namespace=namespace)), base_url=LOOPBACK)
    try:
        deadline, seen = time.monotonic() + 240, None
        while time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), "a training ended before both were attached"
            answer = client.get("/cache")
            if answer.status_code == 503:  # the cache actor is still starting (slow on a loaded machine): ask again
                time.sleep(1.0)
                continue
            assert answer.status_code == 200, f"/cache answered {answer.status_code}: {answer.text[:500]}"
            caches = answer.json()
            if caches and len(caches[0]["experiments"]) == 2:
                ids = [e["experiment_id"] for e in caches[0]["experiments"]]
                histories = {i: client.get(f"/experiments/{i}/sampler").json()["history"] for i in ids}
                if all(len(h) >= 2 for h in histories.values()):
                    seen = (caches, histories, _plasma_bytes(ray_cluster))
                    break
            time.sleep(1.0)
        assert seen is not None, "both experiments never reported validation on the shared cache"
        caches, histories, plasma = seen
        assert len(caches) == 1  # one fingerprint, one cache actor, for both drivers
        cache = caches[0]
        assert len(cache["pool"]) == len(set(cache["pool"])) == cache["items_cached"]
        lrs = sorted(e["info"]["lr"] for e in cache["experiments"])
        assert lrs == [1e-3, 1e-2]
        # each experiment has its own sampler history, published by its own validation actor
        assert all(h and all("ratio" in r for r in h) for h in histories.values())
        one_copy = cache["bytes_cached"]
        assert one_copy > 0 and plasma <= 1.2 * one_copy, (plasma, one_copy)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        from cache_service.client import stop_caches

        stop_caches(namespace)
