"""Recovery decisions without Ray: the backoff policy, re-attaching, and replacing lost volumes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from ray.exceptions import OwnerDiedError

import cache_service.recovery as recovery
from cache_service.recovery import RecoveringFetch, ResilientCache
from cache_service.sdk import Experiment
from cache_service.sdk.batches import ConsumerSettings
from cache_service.snapshot import Snapshot
from cache_service.status import CacheStatus
from common.backoff import Backoff
from common.errors import CacheUnavailableError, PoolFailedError, UnknownItemError


def test_backoff_grows_caps_and_jitters_within_bounds():
    policy = Backoff(timeout_s=100, initial_s=0.5, factor=2, max_s=4, jitter=0.25)
    rng = np.random.default_rng(0)
    for attempt, base in enumerate([0.5, 1, 2, 4, 4, 4]):
        d = policy.delay(attempt, rng)
        assert 0.75 * base <= d <= base
    assert Backoff(timeout_s=1, jitter=0).delay(1000, rng) == 5.0  # huge attempt counts do not overflow


def test_backoff_clock_never_overshoots_the_timeout():
    clock = Backoff(timeout_s=3, initial_s=1, factor=2, max_s=10, jitter=0).start(100.0, np.random.default_rng(1))
    now, waits = 100.0, []
    while (d := clock.next_delay(now)) is not None:
        waits.append(d)
        now += d
    assert waits == [1.0, 2.0] and now == 103.0 and now - clock.started == 3.0


def test_backoff_clock_renewed_counts_the_timeout_from_the_renewal():
    clock = Backoff(timeout_s=3, initial_s=1, factor=1, max_s=1, jitter=0).start(0.0, np.random.default_rng(1))
    assert clock.next_delay(2.5) == 0.5 and clock.next_delay(3.0) is None
    clock.renew(3.0)  # progress seen at t=3: three more seconds
    assert clock.next_delay(5.0) == 1.0 and clock.next_delay(6.0) is None


@pytest.mark.parametrize("bad", [dict(timeout_s=0), dict(timeout_s=1, initial_s=0), dict(timeout_s=1, factor=0.5),
                                 dict(timeout_s=1, jitter=1.0), dict(timeout_s=1, initial_s=9, max_s=1)])
def test_backoff_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        Backoff(**bad)


def _status(state: str, experiments: tuple[str, ...] = (), items_cached: int = 2) -> CacheStatus:
    from cache_service.status import ExperimentStatus

    exps = [ExperimentStatus(experiment_id=e, registered_at=0.0, ratio=1.0) for e in experiments]
    return CacheStatus(fingerprint="ab", name="smartcache-ab", state=state, train_items=4, cache_num=2, capacity=2,
                       items_cached=items_cached, pool=["a", "b"], failure="a: unreadable" * (state == "failed"),
                       bytes_cached=0, byte_budget=1, generation=0, rotations=0,
                       replace_num=1, replacements_pending=0, replacements_ready=0, val_items_total=0,
                       val_items_cached=0, experiments=exps)


class FakeHandle:
    """The typed handle of a cache that is filling, then ready; it logs the calls it gets."""

    def __init__(self, cluster: "FakeCluster") -> None:
        self.cluster = cluster

    def status(self) -> CacheStatus:
        self.cluster.calls.append("status")
        if self.cluster.dies_in is not None:  # the actor dies at this poll and stays away for `down_after` attaches
            self.cluster.dies_in -= 1
            if self.cluster.dies_in < 0:
                self.cluster.dies_in, self.cluster.down = None, self.cluster.down_after
                raise CacheUnavailableError("smartcache-ab", "died while filling")
        self.cluster.filling -= 1
        self.cluster.polls += 1
        state = self.cluster.state or ("filling" if self.cluster.filling >= 0 else "ready")
        return _status(state, self.cluster.knows, self.cluster.polls if self.cluster.grows else 0)

    def register(self, experiment_id: str, info: dict[str, Any] | None = None) -> None:
        self.cluster.calls.append("register")
        self.cluster.knows = self.cluster.knows + (experiment_id,)

    def get_ratio(self, experiment_id: str) -> float:
        self.cluster.calls.append("get_ratio")
        if self.cluster.lose_next:
            self.cluster.lose_next = False
            raise CacheUnavailableError("smartcache-ab", "died mid-call")
        if experiment_id not in self.cluster.knows:
            raise UnknownItemError("experiment", experiment_id)
        return 2.0


class FakeCluster:
    """The cache as seen through client.attach: down for a while, then filling, then ready."""

    def __init__(self, down: int, filling: int, knows: tuple[str, ...] = ("exp",)) -> None:
        self.down, self.filling, self.knows = down, filling, knows
        self.calls: list[str] = []
        self.lose_next = False
        self.dies_in: int | None = None
        self.down_after = 0
        self.grows, self.polls, self.state = False, 0, ""  # grows: one more volume prepared at every poll

    def attach(self, fingerprint: str, namespace: str, timeout_s: float) -> FakeHandle:
        if self.down > 0:
            self.down -= 1
            raise CacheUnavailableError("smartcache-ab", "gone")
        return FakeHandle(self)


@pytest.fixture
def fake(monkeypatch):
    def install(**kw: Any) -> FakeCluster:
        cluster = FakeCluster(**kw)
        monkeypatch.setattr(recovery, "attach", cluster.attach)
        return cluster
    return install


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, s: float) -> None:
        self.now += s


def test_resilient_cache_waits_until_back_and_warm_then_reregisters(fake):
    cluster = fake(down=0, filling=0)
    t = FakeTime()
    cache = ResilientCache("ab", "ns", 60, experiment_id="exp2", sleep=t.sleep, clock=lambda: t.now,
                           rng=np.random.default_rng(0))
    cluster.down, cluster.filling = 3, 2  # the actor dies: 3 failed attaches, then 2 polls while it warms
    waited = cache.recover(CacheUnavailableError("smartcache-ab", "died"))
    assert 0 < waited == t.now < 60 and cache.recoveries == [waited]
    assert "register" in cluster.calls and "exp2" in cluster.knows  # the restart had lost exp2: attached again


@pytest.mark.parametrize("away, last_error", [("down", "gone"), ("filling", "still filling")])
def test_resilient_cache_gives_up_after_recover_timeout_with_a_clear_message(fake, away, last_error):
    """Never back (every attach fails), or back but its fill never moves on: both are given up on."""
    cluster = fake(down=0, filling=-1)
    t = FakeTime()
    cache = ResilientCache("ab", "ns", 20, sleep=t.sleep, clock=lambda: t.now, rng=np.random.default_rng(0))
    setattr(cluster, away, 10**6)
    with pytest.raises(CacheUnavailableError, match=rf"recover_timeout_s=20s .*{last_error}"):
        cache.recover(CacheUnavailableError("smartcache-ab", "died"))
    assert t.now == pytest.approx(20.0)


def test_a_restarted_cache_that_refills_slowly_is_waited_for_past_recover_timeout(fake):
    """recover_timeout_s bounds how long the cache is away, not how long a live fill takes."""
    cluster = fake(down=0, filling=-1)
    t = FakeTime()
    cache = ResilientCache("ab", "ns", 3, sleep=t.sleep, clock=lambda: t.now, rng=np.random.default_rng(0))
    cluster.down, cluster.filling, cluster.grows = 2, 40, True  # back soon, then 40 polls of a fill moving on
    waited = cache.recover(CacheUnavailableError("smartcache-ab", "died"))
    assert waited == t.now > 3 * 10 and cluster.polls == 41


def test_a_restarted_cache_whose_every_item_failed_ends_the_wait_at_once(fake):
    cluster = fake(down=0, filling=-1)
    t = FakeTime()
    cache = ResilientCache("ab", "ns", 300, sleep=t.sleep, clock=lambda: t.now, rng=np.random.default_rng(0))
    cluster.state = "failed"
    with pytest.raises(PoolFailedError, match="a: unreadable"):
        cache.recover(CacheUnavailableError("smartcache-ab", "died"))
    assert t.now == 0.0


def test_a_typed_call_recovers_and_retries_behind_the_method(fake):
    cluster = fake(down=0, filling=-1)
    t = FakeTime()
    cache = ResilientCache("ab", "ns", 60, experiment_id="exp", sleep=t.sleep, clock=lambda: t.now,
                           rng=np.random.default_rng(0))
    cluster.lose_next, cluster.down = True, 2  # the call fails, then two attaches fail, then it is back
    assert cache.get_ratio("exp") == 2.0
    assert cluster.calls.count("get_ratio") == 2 and len(cache.recoveries) == 1


def test_a_typed_call_reregisters_an_experiment_the_restarted_cache_lost(fake):
    cluster = fake(down=0, filling=-1, knows=())
    cache = ResilientCache("ab", "ns", 60, experiment_id="exp3", rng=np.random.default_rng(0))
    assert cache.get_ratio("exp3") == 2.0 and "exp3" in cluster.knows
    with pytest.raises(UnknownItemError):  # someone else's experiment is not ours to re-register
        cache.get_ratio("nobody")


def _filling_experiment(cluster: FakeCluster, t: FakeTime, recover_timeout_s: float) -> Experiment:
    """An experiment opened while the cache fills; the cache dies at its third status poll."""
    exp = Experiment("ab", "ns", "exp", ConsumerSettings(batch_size=2), num_classes=2,
                     recover_timeout_s=recover_timeout_s)
    exp._cache = ResilientCache("ab", "ns", recover_timeout_s, experiment_id="exp", sleep=t.sleep,
                                clock=lambda: t.now, rng=np.random.default_rng(0))
    cluster.dies_in = 2
    return exp


def test_the_fill_wait_rides_out_a_cache_that_dies_while_filling(fake):
    cluster = fake(down=0, filling=4)
    t = FakeTime()
    exp = _filling_experiment(cluster, t, recover_timeout_s=60)
    cluster.down_after = 2  # two failed attaches, then back (and warm: the restart's polls use up `filling`)
    status = exp.wait_until_ready()
    assert status.state == "ready" and 0 < t.now < 60 and len(exp.cache.recoveries) == 1
    # the wait counts as this process's warm-up: a first snapshot will not poll the status again
    assert exp._warm


def test_the_fill_wait_gives_up_after_recover_timeout_when_the_cache_stays_away(fake):
    cluster = fake(down=0, filling=4)
    t = FakeTime()
    exp = _filling_experiment(cluster, t, recover_timeout_s=10)
    cluster.down_after = 10**6  # stopped for good
    with pytest.raises(CacheUnavailableError, match=r"did not come back within cache.recover_timeout_s=10s"):
        exp.wait_until_ready()
    assert t.now == pytest.approx(10.0) and not exp._warm


class LostRefs:
    """ray.get stand-in: refs named 'old-*' belong to the dead owner."""

    def __call__(self, ref: str) -> str:
        if ref.startswith("old"):
            raise OwnerDiedError("00" * 28, None, "")
        return f"volume {ref}"


class SnapCache:
    name = "smartcache-ab"

    def __init__(self) -> None:
        self.recovered = self.snapshots = 0

    def recover(self, err: BaseException) -> float:
        self.recovered += 1
        return 0.0

    def snapshot(self, experiment_id: str, epoch: int | None = None) -> Snapshot:
        self.snapshots += 1
        return Snapshot(1, ("a", "b", "c"), ("new-a", "new-b", "new-c"), 1.0)


def test_lost_volumes_are_replaced_from_one_fresh_snapshot_at_the_same_positions():
    cache = SnapCache()
    old = Snapshot(0, ("a", "b", "c"), ("old-a", "old-b", "old-c"), 1.0)
    fetch = RecoveringFetch(cache, old, lambda: cache.snapshot("exp", 4), get=LostRefs())  # type: ignore[arg-type]
    assert [fetch(r) for r in ("old-c", "old-a", "old-b")] == ["volume new-c", "volume new-a", "volume new-b"]
    assert cache.recovered == 1 and cache.snapshots == 1 and fetch.replaced == 3
    assert fetch("fine") == "volume fine"  # refs that still resolve are read as they are


def test_a_cache_that_keeps_dying_ends_the_lookup_with_a_clear_error():
    class AlwaysLost(SnapCache):
        def snapshot(self, experiment_id: str, epoch: int | None = None) -> Snapshot:
            self.snapshots += 1
            return Snapshot(1, ("a",), ("old-again",), 1.0)

    cache = AlwaysLost()
    fetch = RecoveringFetch(cache, Snapshot(0, ("a",), ("old-a",), 1.0), lambda: cache.snapshot("exp"),
                            get=LostRefs())  # type: ignore[arg-type]
    with pytest.raises(CacheUnavailableError, match="lost its volumes 3 times"):
        fetch("old-a")
    assert cache.snapshots == 3
