"""The three examples run as a user runs them, and two of them attached at once share one cache copy."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cache_service.client import cache_actor_names, lookup, stop_caches
from common.demo_data import make_demo_data
from tests.integration.test_shared_experiments import _plasma_bytes

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--epochs", "2", "--steps", "2", "--patch", "24", "--cache-num", "3"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("examples"), cases=6, size=48, seed=2)


def _example(name: str, data: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "examples" / f"{name}.py"), "--data", str(data), *extra]


@pytest.mark.timeout(480)
def test_plain_pytorch_runs_on_its_own(demo, tmp_path):
    """Exactly as the README says: no address, so the example starts (and ends) its own Ray."""
    done = subprocess.run(_example("plain_pytorch", demo, *SMALL), capture_output=True, text=True, timeout=450,
                          cwd=tmp_path)  # minutes of it are Ray starting on a loaded 2-core machine
    assert done.returncode == 0, done.stderr[-3000:]
    assert "epoch 1:" in done.stdout and "next ratio" in done.stdout and "cycle coverage" in done.stdout


@pytest.mark.timeout(330)
@pytest.mark.parametrize("name, patch", [("monai_loop", "24"), ("ray_train_loop", "24"),
                                         ("monai_tutorial", "16")])  # the tutorial's spacing leaves smaller volumes
def test_example_on_a_cluster(name, patch, ray_cluster, demo, tmp_path):
    namespace = f"ex-{uuid.uuid4().hex[:6]}"
    try:
        done = subprocess.run(_example(name, demo, *SMALL, "--patch", patch, "--address", ray_cluster,
                                       "--namespace", namespace),
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "epoch 1:" in done.stdout and "next ratio" in done.stdout, done.stdout
    finally:
        stop_caches(namespace)


@pytest.mark.timeout(420)
def test_two_examples_attached_at_once_share_one_copy(ray_cluster, demo, tmp_path):
    """plain_pytorch and ray_train_loop use the project's chain: one fingerprint, one cache, one copy."""

    namespace = f"ex-{uuid.uuid4().hex[:6]}"
    # more epochs than either can finish (the two are killed once both are seen): on an idle machine
    # plain_pytorch's tiny epochs would otherwise end before Ray Train has started its workers
    args = ["--epochs", "100000", "--steps", "1", "--patch", "24", "--cache-num", "3",
            "--address", ray_cluster, "--namespace", namespace]
    procs = [subprocess.Popen(_example(n, demo, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=tmp_path) for n in ("plain_pytorch", "ray_train_loop")]
    seen = None
    try:
        deadline = time.monotonic() + 360
        while time.monotonic() < deadline and seen is None and all(p.poll() is None for p in procs):
            names = cache_actor_names(namespace)
            if names:
                status = lookup(names[0], namespace).status()
                if len(status.experiments) == 2 and all(e.epoch >= 1 for e in status.experiments):
                    seen = (names, status, _plasma_bytes(ray_cluster))
            time.sleep(1.0)
        assert seen is not None, [p.poll() for p in procs]
        names, status, plasma = seen
        assert len(names) == 1  # one fingerprint: one cache actor for both examples
        assert {e.info["name"] for e in status.experiments} == {"plain-pytorch", "ray-train"}
        assert 0 < status.bytes_cached and plasma <= 1.2 * status.bytes_cached, (plasma, status.bytes_cached)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=30)
        stop_caches(namespace)


@pytest.mark.timeout(600)
def test_tune_sweep_example_shares_one_cache(ray_cluster, demo, tmp_path):
    """The user's own Tune trainable: three trials on one cache, each detached when it ends."""
    namespace = f"ex-{uuid.uuid4().hex[:6]}"
    try:
        done = subprocess.run(_example("tune_sweep", demo, *SMALL, "--address", ray_cluster, "--namespace", namespace),
                              capture_output=True, text=True, timeout=570, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("lr ") >= 4 and "best lr" in done.stdout, done.stdout
        names = cache_actor_names(namespace)
        assert len(names) == 1
        assert lookup(names[0], namespace).status().experiments == []
    finally:
        stop_caches(namespace)
