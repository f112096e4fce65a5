"""CacheBook and ExperimentRegistry without Ray: budget, quarantine, rotation refs, counters, ratios."""

from __future__ import annotations

import numpy as np
import pytest

from cache_service.pool import CacheBook, PrepMeta
from cache_service.registry import ExperimentRegistry
from common.errors import UnknownItemError

IDS = [f"c{i}" for i in range(8)]


def _book(cache_num: int = 3, rate: float = 0.5, budget: int = 10**9, val: tuple[str, ...] = ()) -> CacheBook:
    return CacheBook(IDS, list(val), cache_num, rate, budget, replace_workers=2, rng=np.random.default_rng(0))


def _run(book: CacheBook, nbytes: int = 100, fail: set[str] = frozenset(), rounds: int = 5) -> None:
    """Play the actor's pump: prepare every job it asks for (refs are just strings here)."""
    for _ in range(rounds):
        for item in book.next_train_jobs():
            book.started(item)
            if item in fail:
                book.fail(item, f"/data/{item}.nii.gz: truncated")
            else:
                book.accept(PrepMeta(item, nbytes, 1.5), f"ref-{item}")
        for item in book.next_val_jobs():
            book.started(item, val=True)
            book.accept_val(PrepMeta(item, nbytes, 2.0), f"ref-{item}")


def test_warm_pool_then_ready_replacements() -> None:
    book = _book()
    _run(book)
    st = book.status_fields()
    assert st["state"] == "ready" and st["items_cached"] == 3 and st["replacements_ready"] == 2
    assert st["prep_seconds_spent"] == pytest.approx(5 * 1.5)


def test_prep_cpu_seconds_sum_every_task_disk_reads_included() -> None:
    """What the sweep benchmark reports as the shared cache's preparation CPU: fills, replacements, validation."""
    book = _book(val=("v0",))
    for item in book.next_train_jobs():
        book.started(item)
        book.accept(PrepMeta(item, 100, 1.5, cpu_seconds=2.0), f"ref-{item}")
    jobs = book.next_val_jobs()
    book.started(jobs[0], val=True)
    book.accept_val(PrepMeta(jobs[0], 100, 9.0, from_disk=True, cpu_seconds=0.25), "ref-v0")
    st = book.status_fields()
    assert st["prep_cpu_seconds"] == pytest.approx(5 * 2.0 + 0.25)
    assert st["prep_seconds_spent"] == pytest.approx(5 * 1.5)  # a disk read is saved time, yet it cost CPU


def test_snapshot_refs_survive_in_caller_after_rotation_and_count_uses() -> None:
    book = _book()
    _run(book)
    gen, ids, refs = book.snapshot()
    rot = book.rotate()
    assert len(rot.leaving) == 2 and set(rot.leaving) <= set(ids)
    assert refs == tuple(f"ref-{i}" for i in ids)  # the caller's tuple is untouched
    assert all(i not in book.entries for i in rot.leaving)
    book.snapshot()
    kept = set(ids) - set(rot.leaving)
    assert book.use_counts[next(iter(kept))] == 2
    assert book.seconds_saved == pytest.approx(1.5 * len(kept))
    assert book.plan.generation == gen + 1


def test_rotation_without_ready_replacements_changes_nothing() -> None:
    book = _book()
    for item in book.next_train_jobs()[:3]:
        book.started(item)
        book.accept(PrepMeta(item, 100, 1.0), item)
    rot = book.rotate()
    assert rot.entering == () and rot.leaving == () and book.rotations == 0


def test_quarantine_fills_from_good_items() -> None:
    first = _book().plan.wanted()[0]
    book = _book()
    _run(book, fail={first})
    st = book.status_fields()
    assert [q.item_id for q in st["quarantined"]] == [first] and "truncated" in st["quarantined"][0].error
    assert st["items_cached"] == 3 and first not in st["pool"]


def test_byte_budget_is_never_exceeded_and_said() -> None:
    book = _book(cache_num=5, rate=0.2, budget=450, val=("v0",))
    _run(book, nbytes=100)
    st = book.status_fields()
    assert st["bytes_cached"] <= 450 and st["budget_limited"] and "holds 3 of 5" in st["budget_message"]
    assert st["items_cached"] == 3 and st["state"] == "ready" and st["replacements_ready"] == 1
    assert st["val_items_cached"] == 0 and "validation" in st["budget_message"]
    for _ in range(4):
        book.rotate()
        _run(book, nbytes=100, rounds=1)
        assert book.held_bytes() <= 450


def test_registry_ratio_history_and_idle_clock() -> None:
    reg = ExperimentRegistry(default_ratio=1.0)
    reg.register("a", {"initial_ratio": 0.5}, now=10.0)
    reg.register("b", None, now=11.0)
    assert reg.get_ratio("a") == 0.5 and reg.get_ratio("b") == 1.0
    reg.publish_sampler("a", 2.0, 0.1, 0.3, [0.95, 0.7], 0.82, epoch=3, now=20.0)
    assert reg.get_ratio("a") == 2.0 and reg.get("a").sampler_history[0].mean_dice == 0.82
    reg.report_progress("b", 4, {"loss": 0.3}, now=21.0)
    assert reg.get("b").epoch == 4 and reg.statuses()[1].progress == {"loss": 0.3}
    with pytest.raises(UnknownItemError):
        reg.get_ratio("zzz")
    assert reg.unregister("a", now=30.0) and reg.last_detach is None or len(reg) == 1
    assert reg.unregister("b", now=31.0) and reg.last_detach == 31.0
    assert not reg.unregister("b", now=32.0)


def test_the_fill_keeps_at_most_fill_workers_tasks_in_flight() -> None:
    """A pool of 6 filled two tasks at a time (a 2-core node), then R = 3 replacements one beyond the fill
    at a time (replace_workers = 1 is below fill_workers, so the fill's cap holds there too)."""
    book = CacheBook(IDS, [], 6, 0.5, 10**9, replace_workers=1, rng=np.random.default_rng(0), fill_workers=2)
    first = book.next_train_jobs()
    assert len(first) == 2
    for item in first:
        book.started(item)
    assert book.next_train_jobs() == []  # both slots busy
    book.accept(PrepMeta(first[0], 100, 1.0), "ref")
    assert len(book.next_train_jobs()) == 1
    unlimited = CacheBook(IDS, [], 6, 0.5, 10**9, replace_workers=1, rng=np.random.default_rng(0))
    assert len(unlimited.next_train_jobs()) == 7  # the whole fill plus one replacement at once


def test_only_a_warm_pools_replacements_run_at_lower_priority() -> None:
    """The fill and validation volumes are waited on; a replacement beside training may be late."""
    book = _book(val=("v0",))
    fill = book.next_train_jobs()  # the pool's 3 and the first replacements, asked for before it is warm
    assert [book.beside_training(False) for _ in fill] == [False] * len(fill)
    for item in fill:
        book.started(item)
        book.accept(PrepMeta(item, 100, 1.5), f"ref-{item}")
    assert book.warm
    assert book.beside_training(False)  # a replacement
    assert not book.beside_training(True)  # a validation volume
