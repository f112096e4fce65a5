"""Give the thread that validates a lower CPU priority than the trainers, so a step never waits on it.

On a node with few cores a sliding-window validation beside training competes with the
trainer for the CPU. Under Ray Train, where the trainer and the validation actor are both Ray
workers (niceness 15), the trainer's steps on the 2-core CT profile took 0.39-0.41 s while a
validation ran beside them against 0.27-0.29 s without (docs/benchmarks.md, "Three seeds").
Training is what the run waits on; a validation finishing a little later only delays when the
sampler's next ratio and the run's Dice are known.

Linux keeps a niceness per *thread*: ``os.nice`` or ``renice PID`` reaches only the main thread,
and a thread started later inherits the niceness of the thread that started it. So the
validating thread lowers its own priority (``setpriority`` with its native thread id); threads it
starts, such as one per GPU for a multi-GPU validation, inherit it. An unprivileged process
cannot raise a priority again, which is why this is done once per thread and never undone.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)

#: the largest niceness Linux allows
MAX_NICENESS = 19


def target_niceness(process_niceness: int, increment: int) -> int:
    """The niceness a thread of a process at ``process_niceness`` gets ``increment`` steps lower (capped at 19)."""
    return min(MAX_NICENESS, process_niceness + increment)


def lower_thread_priority(increment: int) -> int | None:
    """Make the calling thread ``increment`` niceness steps lower than its process's main thread.

    Idempotent: a thread already there (or lower) is left as it is. Returns the thread's niceness
    afterwards, or None where nothing was done: ``increment`` 0, a system other than Linux (where
    ``setpriority`` takes a process id, not a thread id), or a refusal by the OS (logged, never
    raised: validation still runs, only at the trainers' priority).
    """
    if increment <= 0 or not sys.platform.startswith("linux"):
        return None
    tid = threading.get_native_id()
    try:
        now = os.getpriority(os.PRIO_PROCESS, tid)
        wanted = target_niceness(os.getpriority(os.PRIO_PROCESS, os.getpid()), increment)
        if now < wanted:
            os.setpriority(os.PRIO_PROCESS, tid, wanted)
            log.info("validation thread %d runs at niceness %d (was %d)", tid, wanted, now)
        return max(now, wanted)
    except OSError as err:
        log.warning("could not lower the priority of validation thread %d: %s", tid, err)
        return None
