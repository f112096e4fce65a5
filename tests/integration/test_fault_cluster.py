"""Faults across nodes and under a small object store, each on a Ray cluster of its own (a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _scenario(name: str, folder: Path, timeout_s: float) -> dict:
    proc = subprocess.run([sys.executable, "-m", "tests.integration.cluster_scripts", name, str(folder)],
                          capture_output=True, text=True, timeout=timeout_s)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert proc.returncode == 0 and result["ok"], result
    return result


@pytest.mark.slow
@pytest.mark.timeout(660)
def test_cache_killed_while_trainers_run_on_another_node(tmp_path):
    result = _scenario("two_node", tmp_path, 600)
    assert result["trainers_elsewhere"] >= 1 and result["cache_restarts"] == 1


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_small_object_store_lowers_the_budget_and_loses_no_item(tmp_path):
    result = _scenario("small_store", tmp_path, 200)
    assert result["byte_budget"] <= 0.7 * result["store"] and result["served"] == result["train_items"]


@pytest.mark.slow
@pytest.mark.timeout(960)
def test_a_lost_worker_node_with_every_trainer_and_its_volumes(tmp_path):
    result = _scenario("node_lost", tmp_path, 900)
    assert result["epochs"] == 8 and result["quarantined"] == 0 and result["pool"] == result["cache_num"]
    assert result["trainers_on_lost_node"] == result["trainers"] > 0 and result["trainer_restarts"] == 1
    assert len(result["volumes_only_on_lost_node"]) == result["cache_num"] and result["pool_readable_after"]
