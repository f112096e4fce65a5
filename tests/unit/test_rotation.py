"""Rotation policy: pool size, uniqueness, full cycles, partial readiness, quarantine."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pytest

from common.rotation import Rotation, RotationPlan, replace_count

IDS = [f"c{i:02d}" for i in range(23)]


# helpers only these tests need (the service rotates through RotationPlan itself)
def cycle_length(num_items: int, cache_num: int, replace_num: int) -> int:
    """Rotations after which every item outside the initial pool has entered once (0: no rotation)."""
    if replace_num <= 0 or cache_num >= num_items:
        return 0
    return math.ceil((num_items - cache_num) / replace_num)


def simulate(item_ids: Sequence[str], cache_num: int, replace_rate: float, seed: int,
             generations: int) -> list[tuple[tuple[str, ...], Rotation | None]]:
    """Pool at generation 0..``generations`` when every replacement is ready in time.

    Returns ``[(pool_0, None), (pool_1, rotation_1), ...]``: the answer to "which items are
    in the pool at generation g and which left and entered to get there".
    """
    plan = RotationPlan(item_ids, cache_num, replace_rate, np.random.default_rng(seed))
    everything = set(item_ids)
    plan.fill(everything)
    out: list[tuple[tuple[str, ...], Rotation | None]] = [(plan.pool, None)]
    for _ in range(generations):
        rot = plan.rotate(everything)
        out.append((plan.pool, rot))
    return out


@pytest.mark.parametrize("n,cache_num,rate", [(23, 10, 0.2), (23, 7, 0.5), (23, 20, 0.3), (10, 3, 1.0), (5, 4, 0.9)])
def test_constant_size_no_duplicates_at_most_r(n: int, cache_num: int, rate: float) -> None:
    ids = IDS[:n]
    r = replace_count(cache_num, rate, n)
    assert r == min(n - cache_num, math.ceil(cache_num * rate))
    for pool, rot in simulate(ids, cache_num, rate, seed=3, generations=40):
        assert len(pool) == cache_num
        assert len(set(pool)) == cache_num
        if rot is not None:
            assert len(rot.leaving) == len(rot.entering) <= r
            assert not set(rot.entering) & set(rot.leaving)


@pytest.mark.parametrize("n,cache_num,rate", [(23, 10, 0.2), (23, 7, 0.5), (23, 20, 0.3), (10, 3, 1.0)])
def test_every_item_enters_once_per_cycle(n: int, cache_num: int, rate: float) -> None:
    ids = IDS[:n]
    r = replace_count(cache_num, rate, n)
    cycle = cycle_length(n, cache_num, r)
    assert cycle == math.ceil((n - cache_num) / r)
    history = simulate(ids, cache_num, rate, seed=1, generations=3 * cycle)
    for start in range(0, 3 * cycle, cycle):
        outside = set(ids) - set(history[start][0])
        entered = [i for _, rot in history[start + 1: start + cycle + 1] for i in rot.entering]
        assert outside <= set(entered)
        assert all(entered.count(i) == 1 for i in outside)
        seen = set(history[start][0]).union(entered)
        assert seen == set(ids)


def test_oldest_leave_first() -> None:
    history = simulate(IDS, 10, 0.2, seed=0, generations=2)
    pool0 = history[0][0]
    assert history[1][1].leaving == pool0[:2]
    assert history[2][1].leaving == pool0[2:4]


@pytest.mark.parametrize("cache_num,rate", [(10, 0.0), (23, 0.5), (40, 0.5)])
def test_no_rotation_when_r_zero_or_pool_is_everything(cache_num: int, rate: float) -> None:
    history = simulate(IDS, cache_num, rate, seed=0, generations=5)
    assert all(pool == history[0][0] for pool, _ in history)
    assert all(not rot.entering and not rot.leaving for _, rot in history[1:])
    assert len(history[0][0]) == min(cache_num, len(IDS))


def test_seed_decides_order() -> None:
    a = simulate(IDS, 10, 0.2, seed=5, generations=3)
    b = simulate(IDS, 10, 0.2, seed=5, generations=3)
    c = simulate(IDS, 10, 0.2, seed=6, generations=3)
    assert [p for p, _ in a] == [p for p, _ in b]
    assert [p for p, _ in a] != [p for p, _ in c]


def test_rotation_only_swaps_ready_items() -> None:
    plan = RotationPlan(IDS, 10, 0.3, np.random.default_rng(0))
    plan.fill(set(IDS))
    nxt = plan.waiting[:3]
    rot = plan.rotate({nxt[1]})
    assert rot.entering == (nxt[1],) and len(rot.leaving) == 1
    assert plan.waiting[:2] == (nxt[0], nxt[2])
    assert plan.rotate(set()).entering == ()
    assert len(plan.pool) == 10


def test_fill_takes_ready_items_in_order_and_skips_dropped() -> None:
    plan = RotationPlan(IDS, 5, 0.2, np.random.default_rng(0))
    first = plan.wanted()
    assert len(first) == 5 + plan.replace_num
    plan.drop(first[2])
    added = plan.fill(set(IDS))
    assert first[2] not in added and len(added) == 5 and plan.deficit == 0
    assert first[2] not in plan.waiting and plan.dropped == [first[2]]


def test_the_pool_order_does_not_depend_on_which_preparation_finished_first() -> None:
    """The second item ready before the first waits for it, so two caches of the same data and seed
    hand consumers the same pool in the same order (their epoch shuffle starts from it)."""
    plan = RotationPlan(IDS, 3, 0.2, np.random.default_rng(0))
    head = plan.wanted()[:3]
    assert plan.fill({head[1], head[2]}) == ()  # the head is not ready: nothing moves yet
    assert plan.fill({head[0], head[2]}) == (head[0],)
    assert plan.fill({head[1], head[2]}) == (head[1], head[2])
    assert plan.pool == head
    other = RotationPlan(IDS, 3, 0.2, np.random.default_rng(0))
    other.fill(set(head))
    assert other.pool == plan.pool


def test_drop_from_pool_frees_a_slot_that_fill_refills() -> None:
    plan = RotationPlan(IDS, 5, 0.2, np.random.default_rng(0))
    plan.fill(set(IDS))
    victim = plan.pool[0]
    plan.drop(victim)
    assert plan.deficit == 1
    plan.fill(set(IDS))
    assert len(plan.pool) == 5 and victim not in plan.pool


def test_lower_capacity_shrinks_at_next_rotation() -> None:
    plan = RotationPlan(IDS, 6, 0.5, np.random.default_rng(0))
    plan.fill(set(IDS))
    plan.set_capacity(4)
    rot = plan.rotate(set(IDS))
    assert len(plan.pool) == 4 and len(rot.leaving) == len(rot.entering) + 2


def test_rejects_duplicates() -> None:
    with pytest.raises(ValueError):
        RotationPlan(["a", "a"], 1, 0.5, np.random.default_rng(0))
