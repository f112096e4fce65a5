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


def _pool_nodes(cache: Any, experiment_id: str) -> dict[str, list[str]]:
    """Item id -> the nodes holding its volume now, read through ``experiment_id``'s snapshot."""
    snap = cache.snapshot(experiment_id)
    where = ray.experimental.get_object_locations(list(snap.refs))
    return {item: where[ref]["node_ids"] for item, ref in zip(snap.item_ids, snap.refs)}


def _pool_reads_back(cache: Any) -> bool:
    """After the run, as a new experiment: every pool volume reads back as its item (none lost with the node)."""
    cache.register("node-check", None)
    try:
        snap = cache.snapshot("node-check")
        return all(ray.get(ref, timeout=120).item_id == item for item, ref in zip(snap.item_ids, snap.refs))
    finally:
        cache.unregister("node-check")


def _recovery(report: dict[str, Any], removed_at: float, epochs_before: int) -> dict[str, Any]:
    """The figures docs/reliability.md quotes: the worker group's restart as the run recorded it."""
    fault = next((f for f in report.get("faults", []) if f["kind"] == "trainer"), None)
    if fault is None:
        return {"recover_s": None, "resumed_epoch": None, "epochs_repeated": None, "seconds_lost": None, "wall_s": None}
    return {"recover_s": round(fault["time"] - removed_at, 1), "resumed_epoch": fault["epoch"],
            "epochs_repeated": epochs_before - fault["epoch"], "seconds_lost": round(fault["seconds_lost"], 1),
            "wall_s": round(report["wall_seconds"], 1)}


def node_lost(tmp: Path) -> dict[str, Any]:
    """Head (driver, validator, Ray Train's controller) + a node with every trainer; a second node joins, the first
    is removed (its raylet and object store killed) mid-run: the run finishes every epoch, nothing quarantined,
    and every volume that was only on the lost node reads back from a live one."""
    from ray.cluster_utils import Cluster

    # no dashboard: its nine processes are the largest share of a 2-core machine after the run's own
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}, connect=False)
    try:
        return _lose_the_trainers_node(cluster, tmp)
    finally:
        ray.shutdown()
        cluster.shutdown()


def _lose_the_trainers_node(cluster: Any, tmp: Path) -> dict[str, Any]:
    """Placement by resources, not by chance: the head's 1 CPU holds the cache actor (0.25) and the validator (0.2),
    and neither a trainer (0.6) nor a preparation task (0.8) fits beside them, so every trainer and every volume
    starts on the doomed node; a 2-CPU node holds both trainers (1.2) and one task (0.8) at a time. 40^3 phantoms:
    every prepared volume is over Ray's 100 KiB inline limit (at 32^3 some are not, and those live in the owner's
    own memory on the head, out of the node loss's reach)."""
    doomed = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    data = make_demo_data(tmp / "data", cases=6, size=40)
    cfg = tiny_config(data, tmp / "stats", epochs=8, checkpoint_every=1, worker_num_cpus=0.6, max_failures=3)
    cfg = cfg.replace(cache=cfg.cache.replace(state_dir=str(tmp / "state"), recover_timeout_s=180.0,
                                              task_num_cpus=0.8))
    out = tmp / "run"
    proc = start_train(cfg, out, cluster.address, tmp / "train.log")
    try:
        wait_for(lambda: trained_epochs(out) >= 3, 300, "3 epochs", proc)
        fp = fingerprint(load_catalog(cfg.data.dataset_dir, cfg.data), cfg.preprocessing)
        actors = _actor_nodes()
        trainer_nodes = [n for k, v in actors.items() if "RayTrainWorker" in k for n in v]
        cache = attach(fp, cfg.cache.namespace)
        before = _pool_nodes(cache, cache.status().experiments[0].experiment_id)
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        epochs_before, removed_at = trained_epochs(out), time.time()
        cluster.remove_node(doomed, allow_graceful=False)
        rc = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    report = json.loads((out / "report.json").read_text()) if rc == 0 else {}
    status = cache.status() if rc == 0 else None
    readable = _pool_reads_back(cache) if rc == 0 else False
    stop_caches(cfg.cache.namespace)
    result = {"exit": rc, "epochs": report.get("epochs"), "epochs_before_loss": epochs_before,
              "trainer_restarts": report.get("restarts", {}).get("trainer"),
              "trainers_on_lost_node": sum(n == doomed.node_id for n in trainer_nodes),
              "trainers": len(trainer_nodes),
              "cache_on_lost_node": doomed.node_id in actors.get(f"SmartCacheService:smartcache-{fp}", []),
              "volumes_only_on_lost_node": sorted(i for i, nodes in before.items() if nodes == [doomed.node_id]),
              "pool_readable_after": readable, "quarantined": len(status.quarantined) if status else None,
              "pool": status.items_cached if status else None, "cache_num": status.cache_num if status else None,
              **_recovery(report, removed_at, epochs_before)}
    result["ok"] = (rc == 0 and result["epochs"] == 8 and result["trainers_on_lost_node"] == result["trainers"] > 0
                    and len(result["volumes_only_on_lost_node"]) == len(before) > 0
                    and result["trainer_restarts"] == 1 and result["quarantined"] == 0
                    and result["pool"] == result["cache_num"] and readable)
    if not result["ok"]:
        result["log"] = (tmp / "train.log").read_text()[-3000:]
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
