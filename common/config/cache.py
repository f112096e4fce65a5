"""The shared cache's own settings: pool size, rotation, byte budgets, disk tier, restarts."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, ClassVar

from common.config.fields import GiB, Bool, ByteSize, Float, Int, Seconds, Str, rule
from common.config.section import Section

PositiveBytes = Annotated[ByteSize, rule(lambda v: v > 0, "a positive byte count")]

#: the cache actor's logical CPUs: it only bookkeeps and submits; its preparation tasks do the work
CACHE_ACTOR_NUM_CPUS = 0.25


def user_cache_root() -> Path:
    """``$XDG_CACHE_HOME/smartcache`` (``~/.cache/smartcache`` when unset): per user, outside any repository."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "smartcache"


class CacheConfig(Section):
    """How many prepared volumes the shared cache holds and how it rotates them."""

    section: ClassVar[str] = "cache"

    cache_num: Annotated[Int, rule(lambda v: v >= 1, "an integer >= 1, or null to use cache_rate")] | None = None
    """Items in the pool; null: cache_rate of the training set."""
    cache_rate: Annotated[Float, rule(lambda v: 0.0 < v <= 1.0, "a fraction in (0, 1]")] = 1.0
    replace_rate: Annotated[Float, rule(lambda v: 0.0 <= v <= 1.0, "a fraction in [0, 1]")] = 0.2
    byte_budget: PositiveBytes = 8 * GiB
    """The pool never holds more; written as a number or with a unit ("8GiB", "512MB")."""
    replace_workers: Annotated[Int, rule(lambda v: v >= 1, "an integer >= 1")] = 2
    fill_workers: Annotated[Int, rule(lambda v: v >= 1, "an integer >= 1, or null for the node's CPU cores")
                            ] | None = None
    """Preparation tasks at once while the pool fills; null: the CPU cores of the cache's node. Each task is a
    process holding torch, MONAI and a raw volume (0.6-0.8 GB for a CT), and preparing is CPU-bound, so tasks
    beyond the cores cost memory and start-up, not time."""
    disk_dir: Str | None = "auto"
    """The disk tier's folder: "auto" is <user cache>/volumes on each node; null: no disk tier."""
    disk_budget: PositiveBytes = 20 * GiB
    """The disk tier deletes its least recently used files beyond this."""
    state_dir: Str | None = None
    """Where the registry survives a restart; null: <user cache>/state."""
    max_restarts: Annotated[Int, rule(lambda v: v >= -1, "an integer >= 0, or -1 for always")] = 10
    """Times Ray brings a dead cache actor back under the same name (-1: always)."""
    recover_timeout_s: Seconds = 300.0
    """A consumer waits this long for a dead cache to come back, then gives up; a cache that answers and
    whose fill moves on is not away (the wait counts from its last prepared volume)."""
    idle_timeout_s: Seconds = 600.0
    rotation_nice_increment: Annotated[Int, rule(lambda v: 0 <= v <= 19, "an integer in [0, 19] (0: the "
                                                                          "trainers' priority)")] = 4
    """Linux: once the pool is warm, a preparation task runs this many niceness steps below its process
    (capped at 19), so a rotation beside training yields the CPU to the trainers' steps and to validation
    (common/priority.py); Ray's workers run at 15, so the default puts rotation at 19. The fill keeps the
    process's priority: the trainers wait on it. 0: rotation at the trainers' priority."""
    task_num_cpus: Annotated[Float, rule(lambda v: 0 < v <= 64, "a CPU share in (0, 64]")] = 0.5
    """Ray's CPU share per preparation task. The cache itself bounds how many run at once (fill_workers,
    replace_workers), so the share only has to let Ray place them beside the run: at most what the trainers,
    validation and the cache actor (0.25) leave, over the fill's tasks, or the trainers start after the fill.
    A run that leaves no room for one task is refused: its pool would never rotate (common/cpu_budget.py)."""
    namespace: Str = "smartcache"
    stats_dir: Str | None = None
    """Where dataset-wide CT statistics are kept; null: ~/.cache/smartcache-seg."""
    enabled: Bool = True
    """false: trainers load and preprocess every volume every epoch (the baseline)."""
    experiment_timeout_s: Annotated[Float, rule(lambda v: v > 0, "seconds > 0 (longer than the slowest "
                                                                 "experiment's epoch)")] = 1800.0
    """Last resort: an attached experiment silent this long (a live one that reports nothing, or a client
    without a lease) no longer holds back the rotation."""
    lease_s: Annotated[Float, rule(lambda v: v > 0, "seconds > 0 (a few heartbeat intervals)")] = 10.0
    """An experiment whose owning process renewed no lease for this long is detached (its owner is gone)."""

    def stats_path(self) -> Path:
        """Folder of the dataset-wide CT statistics (``stats_dir``, or ~/.cache/smartcache-seg)."""
        return Path(self.stats_dir or "~/.cache/smartcache-seg").expanduser()

    def disk_path(self) -> Path | None:
        """Root of the Arrow disk tier, resolved where it is used (each node has its own), or None."""
        if self.disk_dir is None or self.disk_dir.lower() in ("", "none", "off"):
            return None
        return user_cache_root() / "volumes" if self.disk_dir == "auto" else Path(self.disk_dir).expanduser()

    def state_path(self) -> Path:
        """Folder where a cache keeps what must survive its restart (the experiment registry)."""
        return Path(self.state_dir).expanduser() if self.state_dir else user_cache_root() / "state"

    def pool_size(self, num_items: int) -> int:
        """Items in the pool for a training set of ``num_items`` (before the byte budget)."""
        by_rate = max(1, math.ceil(num_items * self.cache_rate))
        return min(num_items, by_rate if self.cache_num is None else min(self.cache_num, by_rate))
