"""Experiment liveness on a real cache: the SIGKILLed one of two drivers is detached, the other rotates on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cache_service.client import attach, stop_cache
from common.catalog import fingerprint, load_catalog
from tests.integration.conftest import small_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


class Driver:
    """One ``lease_driver`` process and the epoch lines it printed (read on a thread)."""

    def __init__(self, address: str, config_file: Path, name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.integration.lease_driver", address,
                                      str(config_file), name], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, cwd=ROOT, start_new_session=True)
        self.epochs: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.epochs.append(json.loads(line))

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def _wait(cond: Any, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while not cond():
        assert time.time() < deadline, f"timed out after {timeout_s:.0f}s waiting for {what}"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_killed_experiment_is_detached_and_the_other_rotates_within_30s(ray_cluster, demo_root, stats_dir,
                                                                         tmp_path):
    cfg = small_config(stats_dir)  # cache.lease_s stays at its default (10 s)
    cfg = cfg.replace(data=cfg.data.replace(dataset_dir=str(demo_root)))
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(cfg.to_dict()))
    fp = fingerprint(load_catalog(demo_root, cfg.data), cfg.preprocessing)
    drivers = [Driver(ray_cluster, config_file, name) for name in ("doomed", "survivor")]
    doomed, survivor = drivers
    try:
        # both attached and rotating together: each rotation waited for both
        _wait(lambda: any(e["rotated"] for d in drivers for e in d.epochs) and all(len(d.epochs) >= 3 for d in drivers),
              240, "both drivers to attach and the pool to rotate once")
        cache = attach(fp, cfg.cache.namespace)
        assert {e.experiment_id for e in cache.status().experiments} == {"doomed", "survivor"}
        doomed.kill()
        t_kill = time.time()
        generation_at_kill = survivor.epochs[-1]["generation"]
        _wait(lambda: any(e["time"] > t_kill and e["generation"] > generation_at_kill for e in survivor.epochs),
              60, "the survivor's next rotation")
        first = next(e for e in survivor.epochs if e["time"] > t_kill and e["generation"] > generation_at_kill)
        assert first["time"] - t_kill < 30, f"the survivor waited {first['time'] - t_kill:.1f}s for a dead experiment"
        # the rotation may not have needed the detach (the dead one may have been done with the generation):
        # the detach itself must still come within the lease (10 s) and well inside 30 s of the kill
        _wait(lambda: [e.experiment_id for e in cache.status().experiments] == ["survivor"],
              max(1.0, 30 - (time.time() - t_kill)), "the dead experiment to be detached")
        status = cache.status()
        assert [e.experiment_id for e in status.experiments] == ["survivor"]
        gone = [d for d in status.detached if d.experiment_id == "doomed"]
        assert gone and gone[0].reason.startswith("owner process gone: no heartbeat for"), status.detached
        assert survivor.proc.poll() is None  # a live experiment is never detached
        assert "survivor" not in {d.experiment_id for d in status.detached}
    finally:
        for d in drivers:
            d.kill()
        try:
            stop_cache(attach(fp, cfg.cache.namespace))
        except Exception:  # the cache may not have started
            pass
