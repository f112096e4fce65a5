"""What survives a restart, without Ray: registry state on disk, the run's record, the disk tier's limit."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch

from cache_service.disk_tier import TierFile, choose_evictions, evict
from cache_service.pool import budget_for_store
from cache_service.registry import ExperimentRegistry, load_state, save_state
from cache_service.status import FaultEvent
from common.config import CacheConfig
from common.errors import ConfigError
import trainer.run_state as run_state_module
from trainer.run_state import RunState


def test_registry_survives_a_round_trip_through_disk(tmp_path: Path):
    reg = ExperimentRegistry(1.0)
    reg.register("a", {"lr": 0.1}, now=1.0)
    reg.register("b", None, now=2.0)
    reg.report_progress("a", 7, {"loss": 0.3}, now=3.0)
    reg.publish_sampler("a", 2.5, 0.1, 0.25, [0.8, 0.6], 0.7, 7, now=4.0)
    reg.record_fault("a", FaultEvent(kind="trainer", time=5.0, epoch=6, cause="rank 1 died", seconds_lost=12.0))
    cache_fault = FaultEvent(kind="cache", time=6.0, cause="restarted")
    reg.record_fault(None, cache_fault)  # a cache restart hits every experiment
    path = tmp_path / "ns" / "fp" / "registry.json"
    save_state(path, reg.to_state(restarts=1, last_fault=cache_fault))
    state = load_state(path)
    assert state is not None and state.restarts == 1
    back = ExperimentRegistry.from_state(state, 1.0)
    a, b = back.get("a"), back.get("b")
    assert (a.epoch, a.ratio, a.progress, len(a.sampler_history)) == (7, 2.5, {"loss": 0.3}, 1)
    assert a.restarts == {"trainer": 1, "cache": 1} and b.restarts == {"cache": 1}
    assert [f.kind for f in a.faults] == ["trainer", "cache"] and a.last_fault.kind == "cache"
    assert (a.last_fault.epoch, b.last_fault.epoch) == (7, -1)  # each at the epoch it had reached
    back.settle_fault(FaultEvent(kind="cache", time=6.0, seconds_lost=3.5))
    assert back.get("b").last_fault.seconds_lost == 3.5 and back.get("a").faults[-1].seconds_lost == 3.5
    assert not list(path.parent.glob(".tmp-*"))  # the atomic write left no temp file


def test_unreadable_registry_state_is_ignored(tmp_path: Path):
    assert load_state(tmp_path / "missing.json") is None
    bad = tmp_path / "registry.json"
    bad.write_text('{"experiments": [{"experiment_id": 3')  # cut off mid-write by some other tool
    assert load_state(bad) is None


def test_run_state_keeps_history_rows_once_and_best_weights(tmp_path: Path):
    state = RunState(tmp_path)
    w1, w2 = {"w": torch.ones(2)}, {"w": torch.full((2,), 2.0)}
    assert state.add_validation({"epoch": 0, "mean_dice": 0.4}, w1)  # the first is the best so far
    assert state.add_validation({"epoch": 1, "mean_dice": 0.6}, w2)
    assert not state.add_validation({"epoch": 2, "mean_dice": 0.5}, w1)
    for epoch, loss in ((0, 1.0), (1, 0.9), (2, 0.8), (1, 0.85)):  # epoch 1 trained again after a restart
        state.add_train({"epoch": epoch, "rank": 0, "loss": loss})
    state.add_fault({"kind": "validator", "time": 1.0})
    back = RunState.load(tmp_path)
    assert [r["epoch"] for r in back.train_history()] == [0, 1, 2] and back.train_history()[1]["loss"] == 0.85
    assert [r["epoch"] for r in back.history()] == [0, 1, 2] and back.faults == [{"kind": "validator", "time": 1.0}]
    assert back.best is not None and back.best[0] == 0.6 and torch.equal(back.best[1]["w"], w2["w"])
    fresh = RunState.load(tmp_path / "fresh")
    assert not fresh.val_rows and not fresh.train_rows and fresh.best is None


def test_run_state_file_never_goes_back_to_an_older_state(tmp_path: Path, monkeypatch):
    """A validation's save (slow: it holds the disk) and a training row arriving from another actor thread
    meanwhile: the file left behind holds both, so a crash after either call returned loses neither."""
    real_write, writing, row_added = run_state_module.atomic_write, threading.Event(), threading.Event()

    def slow_first_write(path, write, mode="wb", suffix=""):
        if threading.current_thread().name == "validation" and not writing.is_set():
            writing.set()
            row_added.wait(timeout=0.3)  # the race: the other thread changes the state during this write
        real_write(path, write, mode, suffix)

    monkeypatch.setattr(run_state_module, "atomic_write", slow_first_write)
    state = RunState(tmp_path)
    validation = threading.Thread(target=state.add_fault, args=({"kind": "validator"},), name="validation")
    validation.start()
    assert writing.wait(timeout=5)
    training = threading.Thread(target=lambda: (state.add_train({"epoch": 3, "loss": 1.0}), row_added.set()))
    training.start()
    validation.join(timeout=5)
    training.join(timeout=5)
    back = RunState.load(tmp_path)
    assert [f["kind"] for f in back.faults] == ["validator"] and [r["epoch"] for r in back.train_history()] == [3]


def test_disk_tier_evicts_least_recently_used_beyond_the_limit(tmp_path: Path):
    files = [TierFile(Path(f"f{k}"), 10, mtime=float(m)) for k, m in enumerate([5, 1, 3, 2])]
    assert [f.path.name for f in choose_evictions(files, 25)] == ["f1", "f3"]
    assert [f.path.name for f in choose_evictions(files, 25, keep=frozenset({Path("f1")}))] == ["f3", "f2"]
    assert choose_evictions(files, 40) == []
    now = time.time()
    for k, fp in enumerate(["fpA", "fpA", "fpB"]):  # the limit covers every fingerprint under the root
        path = tmp_path / fp / f"item{k}.arrow"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x" * 100)
        os.utime(path, (now - 100 + k, now - 100 + k))
    gone = evict(tmp_path, 150)
    assert [p.name for p in gone] == ["item0.arrow", "item1.arrow"]
    assert [p.name for p in tmp_path.glob("*/*.arrow")] == ["item2.arrow"]


def test_byte_budget_is_lowered_to_what_the_object_store_holds():
    assert budget_for_store(100, None) == (100, "")
    assert budget_for_store(100, 1000) == (100, "")
    budget, note = budget_for_store(2000, 1000)
    assert budget == 700 and "lowered to 700 B" in note and "object_store_memory" in note


def test_disk_tier_and_state_folders_default_to_the_user_cache(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cfg = CacheConfig()
    assert cfg.disk_path() == tmp_path / "smartcache" / "volumes"
    assert cfg.state_path() == tmp_path / "smartcache" / "state"
    assert CacheConfig(disk_dir=None).disk_path() is None
    assert CacheConfig(disk_dir="~/t").disk_path() == Path("~/t").expanduser()
    assert CacheConfig(disk_budget="1GiB").disk_budget == 2**30
    for bad in (dict(recover_timeout_s=0), dict(max_restarts=-2), dict(disk_budget="lots")):
        with pytest.raises(ConfigError):
            CacheConfig(**bad)
