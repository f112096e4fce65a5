"""Run a pool's rotation at a lower CPU priority than training and validation, so a step never waits on it.

Once the pool is warm, SmartCache prepares replacements beside training: that work can be late
(the pool keeps training on what it holds until a replacement is ready) while a training step or
a validation cannot. Under Ray Train the trainer, the validation actor and the preparation tasks
are all Ray workers at niceness 15, so on the 2-core CT profile a rotation and a validation beside
a step shared the cores three ways, and steps took 0.39-0.41 s against 0.27-0.29 s without
(docs/benchmarks.md, "Three seeds"). With rotation 4 steps lower, steps beside a validation took
0.38 s against 0.45-0.47 s in a same-session A/B over three seeds ("Rotation at a lower priority").
Lowering the validation instead made each validation take twice as long and the run reach its
target later (same page, "Tried and not adopted").

Linux keeps a niceness per *thread*: ``os.nice`` or ``renice PID`` reaches only the main thread,
and a thread started later inherits the niceness of the thread that started it. So the thread
that prepares lowers its own priority (``setpriority`` with its native thread id). An
unprivileged process cannot raise a priority again, so :func:`call_at_lower_priority` does the work
in a thread of its own that ends with it: Ray reuses a task's worker process, and a later task
there, such as the fill of another cache after a restart, must not inherit a rotation's priority.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

log = logging.getLogger(__name__)

#: the largest niceness Linux allows
MAX_NICENESS = 19
T = TypeVar("T")


def target_niceness(process_niceness: int, increment: int) -> int:
    """The niceness a thread of a process at ``process_niceness`` gets ``increment`` steps lower (capped at 19)."""
    return min(MAX_NICENESS, process_niceness + increment)


def lower_thread_priority(increment: int) -> int | None:
    """Make the calling thread ``increment`` niceness steps lower than its process's main thread.

    Idempotent: a thread already there (or lower) is left as it is. Returns the thread's niceness
    afterwards, or None where nothing was done: ``increment`` 0, a system other than Linux (where
    ``setpriority`` takes a process id, not a thread id), or a refusal by the OS (logged, never
    raised: the work still runs, only at the priority it had).
    """
    if increment <= 0 or not sys.platform.startswith("linux"):
        return None
    tid = threading.get_native_id()
    try:
        now = os.getpriority(os.PRIO_PROCESS, tid)
        wanted = target_niceness(os.getpriority(os.PRIO_PROCESS, os.getpid()), increment)
        if now < wanted:
            os.setpriority(os.PRIO_PROCESS, tid, wanted)
            log.debug("thread %d runs at niceness %d (was %d)", tid, wanted, now)
        return max(now, wanted)
    except OSError as err:
        log.warning("could not lower the priority of thread %d: %s", tid, err)
        return None


def call_at_lower_priority(increment: int, fn: Callable[[], T]) -> T:
    """``fn()`` in a thread of its own ``increment`` niceness steps lower, its result or its exception.

    The calling thread keeps its priority; with ``increment`` 0 (or where threads have no niceness of
    their own) ``fn`` simply runs here.
    """
    if increment <= 0 or not sys.platform.startswith("linux"):
        return fn()

    def lowered() -> T:
        lower_thread_priority(increment)
        return fn()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lower-priority") as pool:
        return pool.submit(lowered).result()
