"""A thread's own priority: lowered for that thread only, once, never above niceness 19."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from common.priority import MAX_NICENESS, lower_thread_priority, target_niceness

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
