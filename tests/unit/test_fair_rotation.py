"""Fair rotation across experiments of different speeds, without Ray: policy, coverage, and a timed simulation."""

from __future__ import annotations

import heapq
from collections import defaultdict

import numpy as np
import pytest

from cache_service.pool import CacheBook, PrepMeta
from cache_service.registry import ExperimentRegistry, end_epoch
from common.fair_rotation import Attached, CycleProgress, advance_cycle, holding_back, rotation_due

IDS = [f"c{i:02d}" for i in range(12)]


def test_rotation_waits_for_every_live_experiment() -> None:
    exps = {"fast": Attached(done_generation=3, last_seen=100.0), "slow": Attached(done_generation=2, last_seen=99.0)}
    assert holding_back(3, exps, now=100.0, stale_after_s=60) == ["slow"]
    assert not rotation_due(3, exps, now=100.0, stale_after_s=60)
    assert rotation_due(2, exps, now=100.0, stale_after_s=60)
    # a crashed experiment that never detached stops holding the pool back after the timeout
    assert holding_back(3, exps, now=160.0, stale_after_s=60) == []
    assert not rotation_due(0, {}, now=0.0, stale_after_s=60)  # nobody attached: nothing to rotate for


def test_cycle_coverage_counts_items_since_the_cycle_began() -> None:
    active = ["a", "b", "c", "d"]
    p = advance_cycle(CycleProgress(), ["a", "b"], active)
    assert p.coverage(active) == 0.5 and p.cycles_completed == 0
    p = advance_cycle(p, ["b", "c"], active)
    assert p.coverage(active) == 0.75
    p = advance_cycle(p, ["d"], active)
    assert p.cycles_completed == 1 and p.seen == frozenset() and p.coverage(active) == 0.0
    assert CycleProgress(frozenset({"a"})).coverage(["a", "x"]) == 0.5  # quarantined "b" left the set


def test_registry_records_repeats_and_coverage() -> None:
    reg = ExperimentRegistry()
    reg.register("e", None, now=0.0)
    reg.record_epoch("e", 0, ["a", "b"], ["a", "b", "c"])
    reg.record_epoch("e", 0, ["a", "b"], ["a", "b", "c"])
    st = reg.get("e")
    assert st.done_generation == 0 and st.repeated_epochs == 1
    assert st.cycle_seen == ["a", "b"] and st.cycle_coverage == pytest.approx(2 / 3)
    assert reg.holding_back(1, now=1.0, stale_after_s=10) == ["e"]
    st_copy = type(st).model_validate_json(st.model_dump_json())  # the registry state serialises
    assert st_copy == st


def _warm_book(cache_num: int = 4, rate: float = 0.5) -> CacheBook:
    book = CacheBook(IDS, [], cache_num, rate, 10**9, replace_workers=4, rng=np.random.default_rng(0))
    for _ in range(3):
        for item in book.next_train_jobs():
            book.started(item)
            book.accept(PrepMeta(item, 10, 1.0), f"ref-{item}")
    return book


def test_end_epoch_rotates_exactly_when_the_rule_says() -> None:
    """The registry has no rule of its own: end_epoch rotates when common.fair_rotation.rotation_due is true."""
    book, reg = _warm_book(), ExperimentRegistry()
    for name in ("fast", "slow"):
        reg.register(name, None, now=0.0)
    gen, ids, _ = book.snapshot()
    assert not end_epoch(reg, book, "fast", 0, None, (gen, ids), now=1.0, stale_after_s=60)
    assert not rotation_due(gen, reg.attached(), now=1.0, stale_after_s=60) and book.plan.generation == gen
    assert reg.holding_back(gen, now=1.0, stale_after_s=60) == ["slow"]
    assert rotation_due(gen, reg.attached(), now=62.0, stale_after_s=60)  # "slow" went silent past the timeout
    assert end_epoch(reg, book, "slow", 0, None, (gen, ids), now=3.0, stale_after_s=60)
    assert book.plan.generation == gen + 1


def _replenish(book: CacheBook) -> None:
    """Replacements are always ready in time (the pump's job)."""
    for item in book.next_train_jobs():
        book.started(item)
        book.accept(PrepMeta(item, 10, 1.0), f"ref-{item}")


def _simulate(epoch_seconds: dict[str, float], until: float, fair: bool) -> tuple[dict, dict, CacheBook]:
    """Experiments train back to back (never waiting); returns items seen per experiment, epoch starts, book."""
    book, reg = _warm_book(), ExperimentRegistry()
    seen: dict[str, set[str]] = defaultdict(set)
    starts: dict[str, list[float]] = defaultdict(list)
    events: list[tuple[float, str, int, tuple[int, tuple[str, ...]]]] = []
    for name in epoch_seconds:
        reg.register(name, None, now=0.0)
    for name, d in epoch_seconds.items():
        gen, ids, _ = book.snapshot()
        starts[name].append(0.0)
        heapq.heappush(events, (d, name, 0, (gen, ids)))
    while events:
        t, name, epoch, (gen, ids) = heapq.heappop(events)
        if t > until:
            break
        seen[name].update(ids)
        if fair:
            end_epoch(reg, book, name, epoch, None, (gen, ids), now=t, stale_after_s=1e9)
        elif epoch > max((e.epoch for e in reg.statuses()), default=-1):  # the old rule: any new highest epoch
            reg.report_progress(name, epoch, None, t)
            book.rotate()
        else:
            reg.report_progress(name, epoch, None, t)
        _replenish(book)
        nxt = book.snapshot()  # the next epoch starts at once: nobody waits
        starts[name].append(t)
        heapq.heappush(events, (t + epoch_seconds[name], name, epoch + 1, (nxt[0], nxt[1])))
    return seen, starts, book


def test_three_times_faster_experiment_neither_waits_and_both_see_every_item() -> None:
    speeds = {"fast": 1.0, "slow": 3.0}
    seen, starts, book = _simulate(speeds, until=60.0, fair=True)
    assert book.rotations >= 4  # at least one full cycle of (12 - 4) / 2 rotations happened
    for name, d in speeds.items():
        assert seen[name] == set(IDS), name  # every item of the cycle, for both
        gaps = np.diff(starts[name])
        assert np.allclose(gaps[1:], d), name  # epochs back to back: never waited for the other
    assert len(starts["fast"]) >= 2.9 * (len(starts["slow"]) - 1)


def test_old_rule_lets_the_fast_experiment_rotate_items_away() -> None:
    """The rule this replaces (rotate at any new highest epoch): the slow experiment misses items."""
    seen, _, book = _simulate({"fast": 1.0, "slow": 3.0}, until=60.0, fair=False)
    assert book.rotations >= 20 and seen["fast"] == set(IDS)
    assert seen["slow"] < set(IDS)  # some items rotated in and out between two of its epochs, every cycle
