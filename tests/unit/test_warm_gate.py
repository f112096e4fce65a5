"""An experiment opened while the cache still fills: its first snapshot waits for the fill (no Ray).

The launcher opens the experiment and starts its trainers before the pool is full, so that Ray
Train's start-up overlaps the fill; a snapshot taken then would make a partial pool an epoch.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from cache_service.sdk import Experiment
from cache_service.sdk.batches import ConsumerSettings
from cache_service.status import CacheStatus
from common.errors import PoolFailedError


def _status(state: str) -> CacheStatus:
    return CacheStatus(fingerprint="ab", name="smartcache-ab", state=state, train_items=4, cache_num=2, capacity=2,
                       items_cached=2 if state == "ready" else 1, pool=["a"], bytes_cached=0, byte_budget=1,
                       generation=0, rotations=0, replace_num=1, replacements_pending=0, replacements_ready=0,
                       val_items_total=0, val_items_cached=0, experiments=[], failure="every item quarantined")


class FillingCache:
    """A cache that answers ``filling`` ``polls`` times, then ``final``; it logs every call."""

    name = "smartcache-ab"

    def __init__(self, polls: int, final: str = "ready") -> None:
        self.polls, self.final = polls, final
        self.calls: list[str] = []

    def status(self) -> CacheStatus:
        self.calls.append("status")
        self.polls -= 1
        return _status("filling" if self.polls >= 0 else self.final)

    def snapshot(self, experiment_id: str, epoch: int | None = None) -> Any:
        self.calls.append(f"snapshot {epoch}")
        return ("pool", epoch)


def _experiment(cache: FillingCache) -> Experiment:
    exp = Experiment("ab", "ns", "e-1", ConsumerSettings(batch_size=2), num_classes=2)
    exp._cache = cache  # what the first use would attach
    return exp


def test_first_snapshot_waits_for_the_fill_and_later_ones_do_not_ask() -> None:
    cache = FillingCache(polls=2)
    exp = _experiment(cache)
    assert exp.snapshot(0) == ("pool", 0)
    assert cache.calls == ["status", "status", "status", "snapshot 0"]  # two answers "filling", then "ready"
    exp.snapshot(1)
    assert cache.calls[-1] == "snapshot 1" and cache.calls.count("status") == 3


def test_a_copy_in_another_process_checks_for_itself() -> None:
    exp = _experiment(FillingCache(polls=0))
    exp.snapshot(0)
    copy = pickle.loads(pickle.dumps(exp))  # what a Ray Train worker gets
    copy._cache = cache = FillingCache(polls=1)
    copy.snapshot(0)
    assert cache.calls == ["status", "status", "snapshot 0"]


def test_a_failed_fill_raises_instead_of_serving_an_empty_pool() -> None:
    cache = FillingCache(polls=1, final="failed")
    with pytest.raises(PoolFailedError, match="every item quarantined"):
        _experiment(cache).snapshot(0)
    assert not any(c.startswith("snapshot") for c in cache.calls)
