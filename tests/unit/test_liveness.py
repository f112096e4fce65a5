"""Experiment liveness without Ray: the lease rule on a fake clock, the registry's detach, the SDK's keeper."""

from __future__ import annotations

import os
import pickle
import threading
import time
from pathlib import Path

import numpy as np

from cache_service.pool import CacheBook, PrepMeta
from cache_service.registry import (ExperimentRegistry, end_epoch, load_state, restore_registry, rotate_if_due,
                                    save_state)
from cache_service.sdk.api import Experiment
from cache_service.sdk.batches import ConsumerSettings
from cache_service.sdk.lease import LeaseKeeper
from common.liveness import expired_leases, lease_reason

LEASE_S, TIMEOUT_S = 10.0, 1800.0
IDS = [f"c{i:02d}" for i in range(8)]


def test_a_lease_expires_only_after_lease_s_without_renewal() -> None:
    renewed = {"live": 100.0, "dead": 89.0, "edge": 90.0, "no-lease": None}
    assert expired_leases(renewed, now=100.0, lease_s=LEASE_S) == {"dead": 89.0}  # "edge" is exactly at the limit
    assert expired_leases(renewed, now=100.5, lease_s=LEASE_S) == {"dead": 89.0, "edge": 90.0}
    assert list(expired_leases(renewed, now=10_000.0, lease_s=LEASE_S)) == ["dead", "edge", "live"]  # no "no-lease"
    assert lease_reason(89.0, 100.0, LEASE_S) == "owner process gone: no heartbeat for 11 s (cache.lease_s = 10 s)"


def _warm_book() -> CacheBook:
    book = CacheBook(IDS, [], 4, 0.5, 10**9, replace_workers=4, rng=np.random.default_rng(0))
    for _ in range(3):
        for item in book.next_train_jobs():
            book.started(item)
            book.accept(PrepMeta(item, 10, 1.0), f"ref-{item}")
    return book


def test_a_dead_experiment_is_detached_with_its_reason_and_stops_holding_the_pool() -> None:
    reg, book = ExperimentRegistry(), _warm_book()
    for name in ("alive", "dead"):
        reg.register(name, None, now=0.0)
        reg.heartbeat(name, now=0.0)
    gen = book.plan.generation
    assert not end_epoch(reg, book, "alive", 0, None, (gen, book.plan.pool), now=1.0, stale_after_s=TIMEOUT_S)
    assert reg.holding_back(gen, now=1.0, stale_after_s=TIMEOUT_S) == ["dead"]
    for t in (2.0, 4.0, 6.0, 8.0, 10.0):  # "alive" renews, "dead" does not (10 s is still within its lease)
        reg.heartbeat("alive", now=t)
        assert reg.expire(now=t, lease_s=LEASE_S) == []
    reg.heartbeat("alive", now=12.0)
    gone = reg.expire(now=12.6, lease_s=LEASE_S)
    assert [d.experiment_id for d in gone] == ["dead"] and "no heartbeat for 13 s" in gone[0].reason
    assert [d.experiment_id for d in reg.detached] == ["dead"] and reg.detached[0].time == 12.6
    assert [e.experiment_id for e in reg.statuses()] == ["alive"]
    assert rotate_if_due(reg, book, now=12.6, stale_after_s=TIMEOUT_S)  # the one it waited for is gone
    assert book.plan.generation == gen + 1 and reg.last_detach is None  # the idle clock waits for "alive"
    reg.expire(now=30.0, lease_s=LEASE_S)  # "alive" dies too: the idle clock starts at its detach
    assert len(reg) == 0 and reg.last_detach == 30.0 and len(reg.detached) == 2


def test_a_slow_live_experiment_is_still_waited_for() -> None:
    reg, book = ExperimentRegistry(), _warm_book()
    for name in ("fast", "slow"):
        reg.register(name, None, now=0.0)
        reg.heartbeat(name, now=0.0)
    gen = book.plan.generation
    end_epoch(reg, book, "fast", 0, None, (gen, book.plan.pool), now=1.0, stale_after_s=TIMEOUT_S)
    for t in np.arange(2.0, 600.0, 2.0):  # ten minutes into one epoch, renewing all along
        reg.heartbeat("slow", now=float(t))
        reg.heartbeat("fast", now=float(t))
        assert reg.expire(now=float(t), lease_s=LEASE_S) == []
    assert reg.holding_back(gen, now=600.0, stale_after_s=TIMEOUT_S) == ["slow"] and book.plan.generation == gen


def test_an_experiment_without_a_lease_is_left_to_the_last_resort_timeout() -> None:
    reg = ExperimentRegistry()
    reg.register("old-client", None, now=0.0)
    assert reg.expire(now=1000.0, lease_s=LEASE_S) == [] and len(reg) == 1
    assert reg.holding_back(0, now=1000.0, stale_after_s=TIMEOUT_S) == ["old-client"]
    assert reg.holding_back(0, now=1801.0, stale_after_s=TIMEOUT_S) == []
    assert not reg.heartbeat("never-registered", now=1.0)


def test_detach_records_survive_a_restart_and_leases_start_again(tmp_path: Path) -> None:
    reg = ExperimentRegistry()
    for name in ("a", "b"):
        reg.register(name, None, now=0.0)
        reg.heartbeat(name, now=0.0)
    reg.heartbeat("a", now=5.0)
    reg.expire(now=10.5, lease_s=LEASE_S)  # "b" is gone
    save_state(tmp_path / "registry.json", reg.to_state(0, None))
    assert [d.experiment_id for d in load_state(tmp_path / "registry.json").detached] == ["b"]
    # the cache was down from 10.5 to 60: "a" could not renew, and that says nothing about "a"
    back, restarts, fault = restore_registry(tmp_path / "registry.json", 1.0, now=60.0)
    assert restarts == 1 and fault.kind == "cache"
    assert back.expire(now=65.0, lease_s=LEASE_S) == [] and [e.experiment_id for e in back.statuses()] == ["a"]
    assert [d.experiment_id for d in back.detached] == ["b"]


def test_the_keeper_renews_reattaches_when_forgotten_and_stops() -> None:
    answers = iter([True, False] + [True] * 10_000)
    renewals, attaches, failed_once = [], [], threading.Event()

    def renew() -> bool:
        renewals.append(time.monotonic())
        if len(renewals) == 3 and not failed_once.is_set():
            failed_once.set()
            raise ConnectionError("cache away")  # a failed renewal must not end the thread
        return next(answers)

    keeper = LeaseKeeper("e", renew, lambda: attaches.append(1), interval_s=0.01).start()
    deadline = time.monotonic() + 5.0
    while len(renewals) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    keeper.stop()
    assert len(renewals) >= 6 and attaches == [1] and failed_once.is_set() and not keeper.alive
    count = len(renewals)
    time.sleep(0.05)
    assert len(renewals) == count  # nothing after stop()


def test_no_reattach_after_stop() -> None:
    attaches: list[int] = []
    keeper = LeaseKeeper("e", lambda: False, lambda: attaches.append(1), interval_s=60.0)
    keeper.stop()
    keeper.renew_once()  # a renewal that was in flight when the experiment closed
    assert attaches == []


def test_only_the_opening_process_owns_the_lease() -> None:
    exp = Experiment("fp", "ns", "e-1", ConsumerSettings(batch_size=3), num_classes=3, lease_s=5.0)
    exp._owner_pid = os.getpid()
    exp._lease = LeaseKeeper("e-1", lambda: True, lambda: None, interval_s=1.0)
    copy = pickle.loads(pickle.dumps(exp))  # what a Ray Train worker gets
    assert copy._lease is None and not copy._owner and copy.lease_s == 5.0
    exp._owner_pid = os.getpid() + 1  # what a forked child sees: the opener's pid, not its own
    exp.close()  # does nothing: it would need the cache, and must not even try
    assert exp._cache is None and exp._lease is not None
