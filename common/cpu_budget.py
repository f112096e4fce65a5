"""What a run reserves of Ray's logical CPUs, and whether the cache's preparation still fits beside it.

Ray starts a task only where its ``num_cpus`` share is free, whatever the cores are doing. The
cache's preparation tasks (``cache.task_num_cpus`` each) share the cluster's logical CPUs with the
run's trainers, its validation actor and the cache actor itself. Two ways this goes wrong, both
without an error from Ray:

- **No task fits beside the run.** Replacements then queue until the run ends: the pool never
  rotates, and the run trains on its first ``cache_num`` volumes only. On 2 CPUs a trainer of 1 CPU,
  a validation actor of 0.5 and the cache actor's 0.25 leave 0.25: a task of 0.5 never starts.
- **The fill's tasks do not fit beside the trainers.** The trainers, which only start up and wait
  while the pool fills, then get their CPUs after the fill instead of during it, and the first
  step comes seconds later.

The cache itself bounds how many tasks run at once (``cache.fill_workers``, ``cache.replace_workers``),
so a task's share only has to let Ray place it. Cluster totals are checked, as for the trainers:
a necessary condition that says nothing of how the shares split over nodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from common.config import ExperimentConfig
from common.config.cache import CACHE_ACTOR_NUM_CPUS
from common.errors import ConfigError

__all__ = ["CpuBudget", "cpu_budget", "require_rotation_fits", "task_share", "tasks_beside_trials"]


@dataclass(frozen=True)
class CpuBudget:
    """One run's logical CPUs on a cluster (``in_process``: its loop and validation reserve none)."""

    cluster: float
    trainers: float
    validation: float
    task: float  # one preparation task's share
    fill_tasks: int  # tasks in flight while the pool fills
    cache_actor: float = CACHE_ACTOR_NUM_CPUS

    @property
    def left_for_tasks(self) -> float:
        """What the run and the cache actor leave to preparation tasks."""
        return self.cluster - self.trainers - self.validation - self.cache_actor

    @property
    def tasks_beside_run(self) -> int:
        """Preparation tasks Ray can run while the run holds its CPUs (1e-9: Ray's shares are decimal)."""
        return max(0, math.floor(self.left_for_tasks / self.task + 1e-9))

    @property
    def trainers_start_during_fill(self) -> bool:
        return self.tasks_beside_run >= self.fill_tasks


def task_share(left: float, tasks: int) -> float:
    """The largest share (to 1/1000 of a CPU) that lets ``tasks`` preparation tasks run in ``left`` CPUs."""
    return max(0.001, math.floor(1000 * left / max(1, tasks) + 1e-6) / 1000)


def cpu_budget(cfg: ExperimentConfig, cluster_cpus: float, in_process: bool, node_cpus: float) -> CpuBudget:
    """The run's reservations as its config sets them (``node_cpus``: the cores a null fill_workers means)."""
    t = cfg.training
    fill = cfg.cache.fill_workers or max(1, int(node_cpus))
    return CpuBudget(cluster=cluster_cpus, trainers=0.0 if in_process else t.num_workers * t.worker_num_cpus,
                     validation=0.0 if in_process else cfg.validation.num_cpus, task=cfg.cache.task_num_cpus,
                     fill_tasks=fill)


def require_rotation_fits(budget: CpuBudget) -> None:
    """Refuse a run beside which no preparation task fits: its pool would silently never rotate."""
    if budget.tasks_beside_run >= 1:
        return
    left = budget.left_for_tasks
    taken = (f"{budget.trainers:g} for the trainers + {budget.validation:g} for validation + "
             f"{budget.cache_actor:g} for the cache actor")
    fix = (f"set cache.task_num_cpus={task_share(left, budget.fill_tasks):g} (or lower training.worker_num_cpus "
           "or validation.num_cpus)" if left > 0 else "lower training.worker_num_cpus or validation.num_cpus")
    raise ConfigError("cache.task_num_cpus", budget.task,
                      f"a share that fits beside the run: of the cluster's {budget.cluster:g} CPUs it takes {taken}, "
                      f"leaving {max(left, 0):g}, so no preparation task could start while it trains and the pool "
                      f"would never rotate; {fix}")


def tasks_beside_trials(cluster: float, trial_cpus: Sequence[float], concurrent: int, task: float,
                        cache_actors: int = 1) -> int:
    """Preparation tasks Ray can run while a sweep's trials hold their CPUs.

    Tune runs at most ``concurrent`` trials at once, and only as many as fit; the largest are taken to
    be the ones running (the worst case for the tasks). A sweep's driver warns with it when the pool
    could not rotate while its trials train.
    """
    free = cluster - cache_actors * CACHE_ACTOR_NUM_CPUS
    held = 0.0
    for share in sorted(trial_cpus, reverse=True)[:max(0, concurrent)]:
        if held + share > free + 1e-9:
            break
        held += share
    return max(0, math.floor((free - held) / task + 1e-9))
