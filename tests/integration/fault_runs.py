"""Helpers for the fault tests: a `smartcache train` subprocess, the PIDs of its parts, and a kill.

PIDs come from Ray itself (the GCS actor table, or the actor's own answer), never from a
process-name search, so a test can only kill a process of its own cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import ray
import yaml

from common.config import ExperimentConfig


def write_config(cfg: ExperimentConfig, path: Path) -> Path:
    raw = cfg.to_dict()
    raw["data"].pop("dataset_dir", None)
    path.write_text(yaml.safe_dump(json.loads(json.dumps(raw))))  # tuples -> lists
    return path


def start_train(cfg: ExperimentConfig, out: Path, address: str, log: Path) -> subprocess.Popen:
    """``smartcache train`` as a user runs it, attached to the test's cluster."""
    config = write_config(cfg, out.parent / f"{out.name}.yaml")
    cmd = [sys.executable, "-m", "trainer.cli", "train", "--data", cfg.data.dataset_dir, "--config", str(config),
           "--out", str(out), "--address", address]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def trained_epochs(out: Path) -> int:
    """Rank 0's epochs recorded so far in the run folder (the validation actor's saved state)."""
    for path in (out / "state").glob("*/validator.json"):
        try:
            rows = json.loads(path.read_text())["train"]
        except (OSError, ValueError, KeyError):
            return 0
        return len({r["epoch"] for r in rows if r.get("rank", 0) == 0})
    return 0


def validated_epochs(out: Path) -> set[int]:
    """Epochs with a validation row saved in the run folder so far."""
    for path in (out / "state").glob("*/validator.json"):
        try:
            return {int(r["epoch"]) for r in json.loads(path.read_text())["validation"]}
        except (OSError, ValueError, KeyError):
            return set()
    return set()


def experiment_id(out: Path) -> str:
    return next((out / "state").iterdir()).name


def wait_for(cond: Callable[[], Any], timeout_s: float, what: str, proc: subprocess.Popen | None = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def alive_actor_pids(class_fragment: str) -> list[int]:
    """PIDs of live actors whose class name contains ``class_fragment``, from the GCS actor table."""
    table = ray._private.state.actors()  # noqa: SLF001 - the GCS actor table: the state API without a dashboard
    return sorted(a["Pid"] for a in table.values()
                  if class_fragment in a["ActorClassName"] and a["State"] == "ALIVE" and a["Pid"])


def kill(pid: int) -> float:
    os.kill(pid, signal.SIGKILL)
    return time.time()
