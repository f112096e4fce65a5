"""``smartcache sweep`` end to end on demo phantoms: 3 trials, 2 at once, ASHA stops the bad one early.

Each trial trains with two DDP workers (Ray Train inside the Tune trial). One cache actor serves
all three trials, every trial is in the results table, a stopped trial
leaves no experiment attached, and the best config loads as a ``smartcache train --config``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cache_service.client import cache_actor_names, lookup, stop_caches
from common.config import load_config
from common.demo_data import make_demo_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE = """\
name: sweep-test
data: {val_fraction: 0.34, split_seed: 0}
preprocessing: {spacing: [1.5, 1.5, 1.5], ct_percentiles: [0.5, 99.5]}
cache: {cache_num: 3, replace_rate: 0.34, byte_budget: 256MiB, replace_workers: 1, task_num_cpus: 0.2,
        disk_dir: null, namespace: NAMESPACE, stats_dir: STATS}
sampler: {patch_size: [16, 16, 16], samples_per_volume: 2}
training: {batch_size: 2, optimizer: novograd, loss: dice_ce, amp: false, epochs: 8, steps_per_epoch: 4,
           target_dice: 0.95, num_workers: 2, worker_num_cpus: 0.2, channels: [8, 16, 32], strides: [2, 2],
           num_res_units: 1, checkpoint_every: 4, seed: 0}
validation: {roi_size: [32, 32, 32], interval: 2, num_cpus: 0.2}
"""
# grid order is trial order: the two good trials run first (2 at once), so when the third, whose lr
# cannot learn anything in 8 epochs, reaches ASHA's first rung there are results to compare it with
# (and it is below both of them, so it is stopped whatever the timing).
# The target Dice is out of reach, so no trial ends early by reaching it (training stops at the target).
SPACE = "training.lr: grid([1e-2, 3e-3, 1e-6])\n"


@pytest.mark.timeout(900)
def test_sweep_on_one_cache_with_asha(ray_cluster: str, tmp_path: Path) -> None:
    data = make_demo_data(tmp_path / "data", cases=6, size=40, seed=1)
    namespace = f"sweep-{uuid.uuid4().hex[:6]}"
    (tmp_path / "base.yaml").write_text(BASE.replace("NAMESPACE", namespace).replace("STATS", str(tmp_path / "st")))
    (tmp_path / "space.yaml").write_text(SPACE)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "trainer.cli", "sweep", "--data", str(data), "--config", str(tmp_path / "base.yaml"),
           "--space", str(tmp_path / "space.yaml"), "--trials", "1", "--concurrent", "2", "--scheduler", "asha",
           "--grace-period", "2", "--out", str(out), "--name", "acc", "--address", ray_cluster]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=840, cwd=tmp_path)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "3 trials on 1 cache(s)" in done.stdout  # the plan printed at start
        names = cache_actor_names(namespace)
        assert len(names) == 1  # one cache actor for all three trials
        status = lookup(names[0], namespace).status()
        assert status.experiments == []  # finished and stopped trials alike detached
        rows = json.loads((out / "results.json").read_text())
        assert [r["index"] for r in rows] == [0, 1, 2]
        assert len({r["fingerprint"] for r in rows}) == 1 and rows[0]["fingerprint"] == status.fingerprint
        assert all(r["history"] for r in rows)
        bad = rows[2]
        assert bad["values"] == {"training.lr": 1e-6}
        assert bad["state"] == "stopped" and bad["epochs"] < 8, rows  # ASHA stopped it before its last epoch
        # With reduction factor 2, the second good trial to reach a rung is stopped when it is below the
        # first there, which depends on timing; at least one good trial is never stopped and runs to the end.
        assert {r["state"] for r in rows} <= {"done", "stopped"}
        finished = [r for r in rows[:2] if r["state"] == "done"]
        assert finished, rows
        report = json.loads((out / "trials" / f"acc-t{finished[0]['index']}" / "report.json").read_text())
        assert report["config"]["training"]["num_workers"] == 2  # two DDP workers inside the trial
        assert report["epochs"] == 8  # a finished trial ran to the end (the target is out of reach)
        table = (out / "results.md").read_text().splitlines()
        assert len(table) == 2 + 3 and "| yes | stopped |" in table[4]
        assert (out / "dice.png").stat().st_size > 1000
        best = load_config(out / "best.yaml")
        winner = max(rows, key=lambda r: r["best_dice"])
        assert best.training.lr == pytest.approx(winner["values"]["training.lr"]) and best.training.lr > 1e-6
        assert best.name == f"acc-t{winner['index']}"
    finally:
        stop_caches(namespace)


@pytest.mark.timeout(600)
def test_one_worker_trials_train_in_their_own_process(ray_cluster: str, tmp_path: Path) -> None:
    """training.runner: auto with one worker: no Ray Train run and no validation actor per trial, the same
    results table, and every trial's Dice reported to Tune from its in-process validation."""
    data = make_demo_data(tmp_path / "data", cases=6, size=40, seed=1)
    namespace = f"sweep-{uuid.uuid4().hex[:6]}"
    base = BASE.replace("NAMESPACE", namespace).replace("STATS", str(tmp_path / "st"))
    base = base.replace("num_workers: 2, worker_num_cpus: 0.2", "num_workers: 1, worker_num_cpus: 0.4")
    # deterministic: each validation is waited for, so every trial validates epochs 0, 2 and 3 (otherwise
    # one still running when epoch 2 ends is not queued behind, and a loaded machine reports 2)
    base = base.replace("checkpoint_every: 4, seed: 0}", "checkpoint_every: 4, seed: 0, deterministic: true}")
    assert "deterministic: true" in base
    (tmp_path / "base.yaml").write_text(base.replace("epochs: 8", "epochs: 4"))
    (tmp_path / "space.yaml").write_text("training.lr: grid([1e-2, 3e-3])\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "trainer.cli", "sweep", "--data", str(data), "--config", str(tmp_path / "base.yaml"),
           "--space", str(tmp_path / "space.yaml"), "--trials", "1", "--concurrent", "2", "--scheduler", "fifo",
           "--out", str(out), "--name", "inp", "--address", ray_cluster]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=540, cwd=tmp_path)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert done.stdout.count("trains in the trial's process") == 2  # the plan says where each trains
        assert len(cache_actor_names(namespace)) == 1
        rows = json.loads((out / "results.json").read_text())
        assert [r["state"] for r in rows] == ["done", "done"] and all(len(r["history"]) == 3 for r in rows), rows
        for r in rows:
            trial = out / "trials" / f"inp-t{r['index']}"
            assert not (trial / "ray_results").exists()  # no Ray Train run inside the trial
            assert sorted(p.name for p in (trial / "checkpoints").iterdir())  # its checkpoints, for --resume
            report = json.loads((trial / "report.json").read_text())
            assert report["epochs"] == 4 and report["best_mean_dice"] == pytest.approx(r["best_dice"])
    finally:
        stop_caches(namespace)
