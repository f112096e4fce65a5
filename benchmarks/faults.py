"""Recovery time for each fault: SIGKILL the cache actor, one Ray Train worker, the validation actor.

For each fault, one ``smartcache train`` run on demo phantoms (a subprocess attached to a
fresh local Ray started here), killed once ``--kill-at`` epochs are trained. Measured from
the kill, by polling (0.2-0.5 s):

  back      the killed part answers again (cache: warm again; validator: answers; trainer:
            rank 0 starts training again after the worker-group restart)
  next      the next new training epoch is recorded (training carries on; "-" if the run
            had already trained its last epoch)
  lost      what the run's own report says the fault cost (seconds_lost)

Prints a markdown table and the load average (the machine is shared: figures are noisy).

  PYTHONPATH=. python benchmarks/faults.py --out runs/faults

(from the repository root: it shares the fault tests' helpers in tests/integration/fault_runs.py)
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import ray

from cache_service.client import attach, stop_caches
from common.catalog import fingerprint, load_catalog
from common.config import ExperimentConfig, config_from_dict
from common.demo_data import make_demo_data
from tests.integration.fault_runs import (alive_actor_pids, experiment_id, kill, start_train, trained_epochs,
                                          wait_for)

POLL_S = 0.2


def bench_config(data: Path, out: Path, epochs: int) -> ExperimentConfig:
    """The integration tests' tiny network on demo phantoms, with a disk tier (the default) in ``out``."""
    return config_from_dict({
        "name": "faults", "data": {"dataset_dir": str(data), "val_fraction": 0.34},
        "preprocessing": {"spacing": [1.5, 1.5, 1.5]},
        "cache": {"stats_dir": str(out / "stats"), "task_num_cpus": 0.25, "replace_workers": 1,
                  "namespace": f"bench-faults-{uuid.uuid4().hex[:6]}", "disk_dir": str(out / "tier"),
                  "state_dir": str(out / "state")},
        "sampler": {"patch_size": [16, 16, 16], "samples_per_volume": 2},
        "training": {"num_workers": 2, "worker_num_cpus": 0.4, "channels": [4, 8], "strides": [2],
                     "num_res_units": 0, "batch_size": 2, "lr": 0.01, "target_dice": 1.0, "epochs": epochs,
                     "checkpoint_every": 2},
        "validation": {"roi_size": [16, 16, 16], "num_cpus": 0.2, "overlap": 0.0, "interval": 1},
    })


def _cache_handle(cfg: ExperimentConfig) -> Any:
    return attach(fingerprint(load_catalog(cfg.data.dataset_dir, cfg.data), cfg.preprocessing), cfg.cache.namespace,
                  timeout_s=5)


def _answers(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - dead, restarting or unreachable: not back yet
        return None


def _cache_back(cfg: ExperimentConfig, old_pid: int) -> bool:
    def ask() -> bool:
        handle = _cache_handle(cfg)
        if handle.ping()["pid"] == old_pid:
            return False
        return handle.status().state == "ready"
    return bool(_answers(ask))


def _validator_back(cfg: ExperimentConfig, run: Path, old_pid: int) -> bool:
    def ask() -> bool:
        handle = ray.get_actor(f"validator-{experiment_id(run)}", namespace=cfg.cache.namespace)
        return ray.get(handle.pid.remote(), timeout=5) != old_pid
    return bool(_answers(ask))


def _trainer_back(run: Path) -> bool:
    """Rank 0 recorded the restart (it does so before its first epoch after the worker-group restart)."""
    for path in (run / "state").glob("*/validator.json"):
        return any(f["kind"] == "trainer" for f in json.loads(path.read_text())["faults"])
    return False


def one_fault(kind: str, cfg: ExperimentConfig, run: Path, address: str, kill_at: int) -> dict[str, Any]:
    proc = start_train(cfg, run, address, run.parent / f"{kind}.log")
    try:
        wait_for(lambda: trained_epochs(run) >= kill_at, 300, f"{kill_at} epochs", proc)
        if kind == "cache":
            pid = int(_cache_handle(cfg).ping()["pid"])
            back = lambda: _cache_back(cfg, pid)  # noqa: E731
        elif kind == "validator":
            handle = ray.get_actor(f"validator-{experiment_id(run)}", namespace=cfg.cache.namespace)
            pid = int(ray.get(handle.pid.remote()))
            back = lambda: _validator_back(cfg, run, pid)  # noqa: E731
        else:
            pid = alive_actor_pids("RayTrainWorker")[-1]
            back = lambda: _trainer_back(run)  # noqa: E731
        before = trained_epochs(run)
        t_kill = kill(pid)
        wait_for(back, 300, f"{kind} back", proc)
        t_back = time.time()
        t_next: float | None = None
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if trained_epochs(run) > before:
                t_next = time.time()
                break
            time.sleep(POLL_S)
        rc = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    report = json.loads((run / "report.json").read_text()) if (run / "report.json").is_file() else {}
    faults = [f for f in report.get("faults", []) if f["kind"] == kind]
    return {"fault": kind, "exit": rc, "epochs": report.get("epochs"), "back_s": t_back - t_kill,
            "next_epoch_s": None if t_next is None else t_next - t_kill,
            "reported_lost_s": faults[0].get("seconds_lost") if faults else None,
            "faults_in_report": len(faults)}


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/faults")
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--kill-at", type=int, default=4)
    p.add_argument("--faults", nargs="+", default=["cache", "trainer", "validator"])
    args = p.parse_args()
    out = Path(args.out).resolve()
    data = make_demo_data(out / "data", cases=6, size=32)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    rows = []
    for kind in args.faults:
        cfg = bench_config(data, out / kind, args.epochs)
        (out / kind).mkdir(parents=True, exist_ok=True)
        try:
            rows.append(one_fault(kind, cfg, out / kind / "run", address, args.kill_at))
        finally:
            stop_caches(cfg.cache.namespace)
        print(rows[-1], flush=True)
    print(f"\nload average {os.getloadavg()}, {os.cpu_count()} CPUs (shared machine: figures are noisy)\n")
    cols = ["fault", "exit", "epochs", "back_s", "next_epoch_s", "reported_lost_s", "faults_in_report"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    (out / "faults.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
