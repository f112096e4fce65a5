"""Keep freed memory in the processes that train and validate, instead of faulting it in every step.

A training step on CPU allocates and frees the same large activation and gradient tensors
every time. With glibc's defaults, blocks above a (dynamic, at most 32 MiB) threshold are
mmapped and unmapped on free, freed memory at the top of the heap is handed back to the OS
above a small threshold, and each thread allocates from an arena of its own whose heaps are
at most 64 MiB. So every step takes its tensors from fresh pages, and the kernel zeroes and
maps them again: on the CT config (64^3 crops, batch 2, one thread) a fifth of the step's
CPU was system time, and the same step ran at 0.35 s with the defaults against 0.27 s with the
settings here; a sliding-window validation of a CT volume took 2.4 s against 1.9 s
(docs/benchmarks.md, "The allocator"). The step's own peak resident memory did not change, but a
process that trains and validates keeps what one freed for the other: 250-500 MiB more at the
node's peak in the 4-trial CT sweep, for 6 % less time.

Preparing a volume would gain too (4 CT volumes one after another in one process: 8.8 s with
the defaults, 6.6 s with these settings), but a preparation worker then holds about 400 MiB more
while it sits idle between rotations, so preparation tasks keep glibc's defaults for now.

Two ways in, because glibc reads most of its settings once: the ``MALLOC_*`` environment
variables of :func:`heap_env` for the processes Ray starts (the Ray Train workers and the
validation actor), and ``mallopt`` (:func:`keep_freed_memory`) for a loop in a process that is
already running (``training.runner: in_process``), where a thread that already has an arena
keeps it. Other C libraries ignore both.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
from dataclasses import dataclass

log = logging.getLogger(__name__)

MIB = 1 << 20
#: mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
#: blocks above this still come straight from mmap: a whole CT volume, not a step's tensors
MMAP_CAP = 128 * MIB


@dataclass(frozen=True)
class HeapSettings:
    """What a process keeps: free memory at the heap's top up to ``trim_bytes``, blocks below
    ``mmap_bytes`` from the heap, and one arena for every thread (the loop often runs in a thread)."""

    trim_bytes: int
    mmap_bytes: int
    arenas: int = 1

    @classmethod
    def keeping(cls, keep_mib: int) -> HeapSettings | None:
        """The settings for ``training.heap_keep_mib``; None for 0 (the C library's defaults)."""
        if keep_mib <= 0:
            return None
        keep = keep_mib * MIB
        return cls(trim_bytes=keep, mmap_bytes=min(keep // 4, MMAP_CAP))

    def _settings(self) -> tuple[tuple[str, int, int], ...]:
        """(environment variable, mallopt parameter, value), arenas first so that threads started
        afterwards share one."""
        return (("MALLOC_ARENA_MAX", M_ARENA_MAX, self.arenas), ("MALLOC_TRIM_THRESHOLD_", M_TRIM_THRESHOLD,
                self.trim_bytes), ("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD, self.mmap_bytes))

    def env(self) -> dict[str, str]:
        """The settings as glibc's environment variables, for a process about to start."""
        return {name: str(value) for name, _, value in self._settings()}

    def options(self) -> tuple[tuple[int, int], ...]:
        """The same settings as (mallopt parameter, value) pairs, for this running process."""
        return tuple((param, value) for _, param, value in self._settings())


def heap_env(keep_mib: int) -> dict[str, str]:
    """Environment variables for a Ray process that trains or validates (empty for 0)."""
    settings = HeapSettings.keeping(keep_mib)
    return {} if settings is None else settings.env()


def _glibc() -> ctypes.CDLL | None:
    """The running glibc, or None on another C library (musl, macOS, Windows)."""
    if platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c")
    return None if name is None else ctypes.CDLL(name)


def keep_freed_memory(keep_mib: int, libc: ctypes.CDLL | None = None) -> bool:
    """Apply the settings to this running process; True when the C library took every one of them."""
    settings = HeapSettings.keeping(keep_mib)
    if settings is None:
        return False
    libc = libc if libc is not None else _glibc()
    if libc is None:
        return False
    results = [libc.mallopt(param, value) for param, value in settings.options()]  # each one, even after a refusal
    taken = all(r == 1 for r in results)
    if not taken:
        log.warning("glibc refused a malloc setting for training.heap_keep_mib=%d; its defaults stay", keep_mib)
    return taken
