"""Lower the CPU priority of background work (validation, the cache's preparation) beside training.

On a node with fewer cores than busy threads (2 cores: a trainer, its crop threads, the
rotation's preparation and the validation), the kernel shares the cores evenly, and work
running beside training slows every training step. The design wants both beside training,
not in its way: at a higher niceness their threads get the cores only when the trainers'
threads do not want them, so steps keep their pace and the background fills the gaps.

Linux keeps a niceness per thread (``setpriority`` on a thread id); threads inherit their
creator's. Raising one's own niceness needs no privilege; it cannot be lowered again, so only
threads (or a process) that do nothing but validation are touched.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def _threads(whole_process: bool) -> list[int]:
    if whole_process:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    return [threading.get_native_id()]


def lower_priority(niceness: int, whole_process: bool = False) -> None:
    """Raise this thread's (or, ``whole_process``, every current thread's) niceness to ``niceness``.

    A niceness already higher is kept; 0 does nothing; elsewhere than Linux it does nothing
    (the priority is an optimisation, never a condition for correct results).
    """
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return
    for tid in _threads(whole_process):
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
        except OSError as err:  # the thread ended meanwhile, or a sandbox forbids it
            log.debug("could not lower the priority of thread %d: %s", tid, err)


def run_lowered(niceness: int, fn: Callable[[], T]) -> T:
    """``fn()`` in a thread of its own at ``niceness``, so the calling thread (a Ray task worker's main
    thread, which runs other tasks later) keeps its priority; ``fn``'s exception is raised here."""
    if niceness <= 0:
        return fn()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lowered") as pool:
        return pool.submit(lambda: (lower_priority(niceness), fn())[1]).result()


def niceness_of_this_thread() -> int:
    """This thread's niceness (0 where per-thread niceness is not available)."""
    if not sys.platform.startswith("linux"):
        return 0
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
