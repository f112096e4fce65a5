"""Scenarios that need a Ray cluster of their own, run as ``python -m tests.integration.cluster_scripts NAME DIR``.

The test session already holds a local Ray in its process, so a multi-node cluster or a
cluster with a small object store gets a process of its own. Each scenario prints one JSON
line (``RESULT {...}``) with what it saw and exits 0 only if every check held.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import ray

from cache_service.client import attach, get_or_create_cache, stop_caches, wait_until_ready
from common.catalog import fingerprint, load_catalog
from common.config import config_from_dict
from common.demo_data import make_demo_data
from tests.integration.fault_runs import kill, start_train, trained_epochs, wait_for
from tests.integration.test_training import tiny_config


def _actor_nodes() -> dict[str, list[str]]:
    nodes: dict[str, list[str]] = {}
    for a in ray._private.state.actors().values():  # noqa: SLF001 - the GCS actor table
        if a["State"] == "ALIVE":
            nodes.setdefault(a["ActorClassName"] + ":" + a["Name"], []).append(a["Address"]["NodeID"])
    return nodes


def two_node(tmp: Path) -> dict[str, Any]:
    """Head (1 CPU, driver, cache) + a 2-CPU node (trainers); SIGKILL the cache mid-run; the run finishes."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1}, connect=False)
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    data = make_demo_data(tmp / "data", cases=6, size=32)
    cfg = tiny_config(data, tmp / "stats", epochs=8, checkpoint_every=2, worker_num_cpus=1.0)
    cfg = cfg.replace(cache=cfg.cache.replace(disk_dir=str(tmp / "tier"), state_dir=str(tmp / "state"),
                                              recover_timeout_s=120.0))
    out = tmp / "run"
    proc = start_train(cfg, out, cluster.address, tmp / "train.log")
    try:
        wait_for(lambda: trained_epochs(out) >= 3, 300, "3 epochs", proc)
        fp = fingerprint(load_catalog(cfg.data.dataset_dir, cfg.data), cfg.preprocessing)
        nodes = _actor_nodes()
        cache_node = nodes[f"SmartCacheService:smartcache-{fp}"][0]
        trainer_nodes = [n for k, v in nodes.items() if "RayTrainWorker" in k for n in v]
        kill(int(attach(fp, cfg.cache.namespace).ping()["pid"]))
        rc = proc.wait(timeout=420)
    finally:
        if proc.poll() is None:
            proc.kill()
    report = json.loads((out / "report.json").read_text()) if rc == 0 else {}
    status = attach(fp, cfg.cache.namespace).status() if rc == 0 else None
    stop_caches(cfg.cache.namespace)
    result = {"exit": rc, "epochs": report.get("epochs"), "cache_restarts": report.get("restarts", {}).get("cache"),
              "trainers_elsewhere": sum(n != cache_node for n in trainer_nodes), "trainers": len(trainer_nodes),
              "pool": status.items_cached if status else None, "cache_num": status.cache_num if status else None}
    result["ok"] = (rc == 0 and result["epochs"] == 8 and result["cache_restarts"] == 1
                    and result["trainers_elsewhere"] >= 1 and result["pool"] == result["cache_num"])
    if not result["ok"]:
        result["log"] = (tmp / "train.log").read_text()[-3000:]
    ray.shutdown()
    cluster.shutdown()
    return result


def _volume_nodes(fp: str, namespace: str) -> list[str]:
    """The nodes holding the pool's volumes now (read through the run's own experiment id)."""
    cache = attach(fp, namespace)
    experiment_id = cache.status().experiments[0].experiment_id
    refs = list(cache.snapshot(experiment_id).refs)
    return [n for loc in ray.experimental.get_object_locations(refs).values() for n in loc["node_ids"]]


def node_lost(tmp: Path) -> dict[str, Any]:
    """Head (driver, cache, validator) + a node with every trainer; a second node joins, the first is removed
    (its raylet and object store killed) mid-run: the run finishes every epoch, nothing quarantined."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1}, connect=False)
    doomed = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    data = make_demo_data(tmp / "data", cases=6, size=32)
    cfg = tiny_config(data, tmp / "stats", epochs=8, checkpoint_every=1, worker_num_cpus=1.0, max_failures=3)
    cfg = cfg.replace(cache=cfg.cache.replace(state_dir=str(tmp / "state"), recover_timeout_s=180.0))
    out = tmp / "run"
    proc = start_train(cfg, out, cluster.address, tmp / "train.log")
    try:
        wait_for(lambda: trained_epochs(out) >= 3, 300, "3 epochs", proc)
        fp = fingerprint(load_catalog(cfg.data.dataset_dir, cfg.data), cfg.preprocessing)
        trainer_nodes = [n for k, v in _actor_nodes().items() if "RayTrainWorker" in k for n in v]
        volumes_there = sum(n == doomed.node_id for n in _volume_nodes(fp, cfg.cache.namespace))
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        epochs_before = trained_epochs(out)
        cluster.remove_node(doomed, allow_graceful=False)
        rc = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    report = json.loads((out / "report.json").read_text()) if rc == 0 else {}
    status = attach(fp, cfg.cache.namespace).status() if rc == 0 else None
    stop_caches(cfg.cache.namespace)
    result = {"exit": rc, "epochs": report.get("epochs"), "epochs_before_loss": epochs_before,
              "trainer_restarts": report.get("restarts", {}).get("trainer"),
              "trainers_on_lost_node": sum(n == doomed.node_id for n in trainer_nodes),
              "trainers": len(trainer_nodes), "volumes_on_lost_node": volumes_there,
              "quarantined": len(status.quarantined) if status else None,
              "pool": status.items_cached if status else None, "cache_num": status.cache_num if status else None}
    result["ok"] = (rc == 0 and result["epochs"] == 8 and result["trainers_on_lost_node"] == result["trainers"] > 0
                    and result["quarantined"] == 0 and result["pool"] == result["cache_num"])
    if not result["ok"]:
        result["log"] = (tmp / "train.log").read_text()[-3000:]
    ray.shutdown()
    cluster.shutdown()
    return result


def small_store(tmp: Path) -> dict[str, Any]:
    """An 80 MiB object store and a 1 GiB byte budget: the budget is lowered, every item is still served."""
    store = 80 * 2**20
    ray.init(address="local", num_cpus=2, object_store_memory=store, include_dashboard=False, log_to_driver=False)
    data = make_demo_data(tmp / "data", cases=8, size=48)
    cfg = config_from_dict({"sampler": {"patch_size": [16, 16, 16]}, "data": {"val_fraction": 0.25},
                            "cache": {"cache_num": 3, "replace_rate": 0.34, "byte_budget": "1GiB",
                                      "stats_dir": str(tmp / "stats"), "disk_dir": None,
                                      "state_dir": str(tmp / "state"), "task_num_cpus": 0.5,
                                      "namespace": f"store-{uuid.uuid4().hex[:6]}"}})
    catalog = load_catalog(data, cfg.data)
    handle = get_or_create_cache(catalog, cfg, fingerprint(catalog, cfg.preprocessing))
    status = wait_until_ready(handle, progress=False)
    handle.register("e", None)
    served: set[str] = set()
    for epoch in range(3 * len(catalog.train)):  # several full cycles of rotation
        snap = handle.snapshot("e", epoch=epoch)
        for item_id, ref in zip(snap.item_ids, snap.refs):
            assert ray.get(ref).item_id == item_id
        served |= set(snap.item_ids)
        handle.report_progress("e", epoch + 1)
        time.sleep(0.3)  # let replacements land before the next rotation
    last = handle.status()
    stop_caches(cfg.cache.namespace)
    ray.shutdown()
    result = {"byte_budget": last.byte_budget, "store": store, "message": last.budget_message,
              "served": len(served), "train_items": len(catalog.train), "pool": last.items_cached,
              "cache_num": last.cache_num, "quarantined": len(last.quarantined), "rotations": last.rotations}
    result["ok"] = (status.byte_budget < 2**30 and "lowered" in last.budget_message and last.byte_budget <= store
                    and result["served"] == result["train_items"] and result["pool"] == result["cache_num"]
                    and result["quarantined"] == 0 and result["rotations"] > 0)
    return result


if __name__ == "__main__":
    name, folder = sys.argv[1], Path(sys.argv[2])
    folder.mkdir(parents=True, exist_ok=True)
    outcome = {"two_node": two_node, "node_lost": node_lost, "small_store": small_store}[name](folder)
    print("RESULT " + json.dumps(outcome), flush=True)
    sys.exit(0 if outcome["ok"] else 1)
