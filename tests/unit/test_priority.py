"""A thread's own priority: lowered for that thread only, once, never above niceness 19."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from cache_service.tasks import prepare_item
from common.catalog import load_catalog
from common.config import CacheConfig, DataConfig, PreprocessConfig
from common.demo_data import make_demo_data
from common.errors import DataError
from common.preprocess import build_preprocessor
from common.priority import MAX_NICENESS, call_at_lower_priority, lower_thread_priority, target_niceness

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="niceness per thread is Linux's")


def test_target_is_capped_at_19() -> None:
    assert target_niceness(0, 4) == 4
    assert target_niceness(15, 4) == MAX_NICENESS
    assert target_niceness(19, 0) == 19


def _in_a_thread(increment: int, times: int = 1) -> tuple[list[int | None], int]:
    """Results of ``times`` calls in a fresh thread, and that thread's niceness as the OS reports it."""
    out: dict[str, object] = {}

    def body() -> None:
        out["results"] = [lower_thread_priority(increment) for _ in range(times)]
        out["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    t = threading.Thread(target=body)
    t.start()
    t.join(timeout=10)
    return out["results"], out["nice"]  # type: ignore[return-value]


@linux_only
def test_only_the_calling_thread_is_lowered_and_only_once() -> None:
    process_nice = os.getpriority(os.PRIO_PROCESS, os.getpid())
    results, nice = _in_a_thread(3, times=2)
    wanted = target_niceness(process_nice, 3)
    assert nice == wanted
    assert results == [wanted, wanted]  # the second call finds it done and adds nothing
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == process_nice  # this thread untouched


@linux_only
def test_threads_started_by_a_lowered_thread_inherit_it() -> None:
    process_nice = os.getpriority(os.PRIO_PROCESS, os.getpid())
    seen: list[int] = []

    def child() -> None:
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    def parent() -> None:
        lower_thread_priority(2)
        t = threading.Thread(target=child)
        t.start()
        t.join(timeout=10)

    t = threading.Thread(target=parent)
    t.start()
    t.join(timeout=10)
    assert seen == [target_niceness(process_nice, 2)]


def test_zero_leaves_the_priority_alone() -> None:
    before = os.getpriority(os.PRIO_PROCESS, 0)
    results, nice = _in_a_thread(0)
    assert results == [None]
    assert nice == before


def _own_niceness() -> tuple[int, int]:
    tid = threading.get_native_id()
    return tid, os.getpriority(os.PRIO_PROCESS, tid)


@linux_only
def test_work_at_lower_priority_runs_in_a_thread_that_ends_with_it() -> None:
    """So a reused worker process (Ray's) keeps its own priority for the next task."""
    tid, before = _own_niceness()
    work_tid, work_nice = call_at_lower_priority(3, _own_niceness)
    assert work_tid != tid and work_nice == target_niceness(os.getpriority(os.PRIO_PROCESS, os.getpid()), 3)
    assert _own_niceness() == (tid, before)


def test_zero_runs_the_work_right_here() -> None:
    assert call_at_lower_priority(0, _own_niceness) == _own_niceness()


def test_the_work_s_own_error_reaches_the_caller() -> None:
    def broken() -> None:
        raise DataError("/data/case_1.nii.gz", "truncated or corrupt")

    with pytest.raises(DataError, match="truncated"):
        call_at_lower_priority(2, broken)


def test_a_rotation_s_preparation_gives_the_fill_s_volume(tmp_path: Path) -> None:
    """The preparation task at a lower priority: the same arrays, the worker's own thread untouched."""
    root = make_demo_data(tmp_path / "data", cases=2, size=16)
    catalog = load_catalog(root, DataConfig(val_fraction=0.0))
    prep = build_preprocessor(catalog, PreprocessConfig(normalization="mri"), None)
    cache = CacheConfig(disk_dir=None)
    before = _own_niceness()
    _, fill = prepare_item(prep, catalog.train[0], cache, "fp")
    _, rotation = prepare_item(prep, catalog.train[0], cache, "fp", beside_training=True)
    assert np.array_equal(fill.image, rotation.image) and np.array_equal(fill.label, rotation.label)
    assert _own_niceness() == before
