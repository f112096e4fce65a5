"""The run's logical CPUs against the cache's preparation tasks (no Ray): a pool that cannot rotate is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import load_config
from common.cpu_budget import CpuBudget, cpu_budget, require_rotation_fits, task_share, tasks_beside_trials
from common.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "trainer" / "configs"


def two_cpu_run(task: float) -> CpuBudget:
    cfg = load_config(None, ["training.worker_num_cpus=1", "validation.num_cpus=0.5", f"cache.task_num_cpus={task}"])
    return cpu_budget(cfg, cluster_cpus=2, in_process=False, node_cpus=2)


def test_a_run_that_leaves_no_room_for_a_task_is_refused_with_the_share_that_fits() -> None:
    budget = two_cpu_run(0.5)  # 1 + 0.5 + 0.25 (cache actor) leave 0.25: a replacement of 0.5 would never start
    assert budget.left_for_tasks == pytest.approx(0.25) and budget.tasks_beside_run == 0
    with pytest.raises(ConfigError, match=r"cache.task_num_cpus.*leaving 0.25.*never rotate.*task_num_cpus=0.125"):
        require_rotation_fits(budget)


def test_a_share_that_fits_passes_and_a_smaller_one_lets_the_trainers_start_during_the_fill() -> None:
    one = two_cpu_run(0.25)
    require_rotation_fits(one)
    assert one.tasks_beside_run == 1 and not one.trainers_start_during_fill  # the fill's 2 tasks hold them back
    two = two_cpu_run(0.125)
    assert two.tasks_beside_run == 2 and two.trainers_start_during_fill


def test_in_process_runs_reserve_nothing_for_the_loop_and_validation() -> None:
    cfg = load_config(None, ["cache.task_num_cpus=0.5"])
    budget = cpu_budget(cfg, cluster_cpus=2, in_process=True, node_cpus=2)
    assert budget.trainers == budget.validation == 0 and budget.tasks_beside_run == 3


def test_a_run_larger_than_the_cluster_names_the_other_settings() -> None:
    cfg = load_config(None, ["training.worker_num_cpus=2", "validation.num_cpus=0.5"])
    with pytest.raises(ConfigError, match="leaving 0,.*lower training.worker_num_cpus or validation.num_cpus"):
        require_rotation_fits(cpu_budget(cfg, cluster_cpus=2, in_process=False, node_cpus=2))


def test_task_share_rounds_down_to_a_thousandth() -> None:
    assert task_share(0.25, 2) == 0.125 and task_share(0.25, 4) == 0.062 and task_share(3.0, 0) == 3.0
    assert task_share(-1.0, 2) == 0.001  # nothing left: the smallest share (the caller's check refuses it)


@pytest.mark.parametrize("name", ["ct_cpu.yaml", "braindev_cpu.yaml", "demo_cpu.yaml"])
@pytest.mark.parametrize("in_process", [False, True])
def test_the_shipped_cpu_configs_rotate_and_start_their_trainers_during_the_fill_on_2_cpus(name: str,
                                                                                          in_process: bool) -> None:
    budget = cpu_budget(load_config(CONFIGS / name), cluster_cpus=2, in_process=in_process, node_cpus=2)
    require_rotation_fits(budget)
    assert budget.trainers_start_during_fill


def test_tasks_beside_a_sweep_count_the_trials_tune_runs_at_once() -> None:
    # ct_cpu.yaml's trials in process (1 + 0.5 each) on the sweep benchmark's 4 CPUs: 2 at once leave 0.75
    assert tasks_beside_trials(4, [1.5] * 4, concurrent=2, task=0.125) == 6
    # on 2 CPUs Tune can run only one of them at a time, whatever --concurrent says
    assert tasks_beside_trials(2, [1.5] * 4, concurrent=4, task=0.125) == 2
    # the largest trials are taken to be running: 2 + 1 of 3.75 free leave 0.75
    assert tasks_beside_trials(4, [1.0, 2.0, 0.5], concurrent=2, task=0.25) == 3
    # trials that fill the cluster leave nothing: the pool could not rotate beside them
    assert tasks_beside_trials(3.25, [1.5, 1.5], concurrent=2, task=0.125) == 0
    # two caches, two actors
    assert tasks_beside_trials(4, [1.5, 1.5], concurrent=2, task=0.25, cache_actors=2) == 2
