"""``smartcache sweep``: Ray Tune trials, each an experiment on the shared cache of its preprocessing.

The driver plans every trial up front (:mod:`trainer.sweep_plan`), fills one cache per
fingerprint before any trial starts, then lets Tune run the trials. A trial is
:func:`run_trial`: the same :func:`trainer.launcher.run_experiment` as ``smartcache train``,
reporting each validation's Dice to Tune so ASHA can stop bad trials early. The
caches are made here, in the driver, because a trial's placement group captures what the
trial creates: a cache made in a trial would die with it. At the end the driver writes the
results table, the Dice plot and the best config (:mod:`trainer.sweep_results`).

Where a trial trains (``training.runner``): a one-worker trial runs its loop and its validation
in the trial's own process, which Tune placed with the CPUs (and GPUs) of both, so a trial is one
process instead of four (trial, Ray Train controller, worker, validation actor; each imports torch
and MONAI, about 0.5 GB and seconds of start-up). A trial with several workers, or one with
``training.runner: ray_train``, runs Ray Train inside the trial (DDP, worker restarts) with a
validation actor beside it, and the trial's own process asks for little.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import ray
from ray import tune
from ray.tune import PlacementGroupFactory
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from cache_service.sdk import SmartCache
from cache_service.sdk.tune import detach_trial, trial_info
from common.cpu_budget import tasks_beside_trials
from common.errors import ConfigError
from trainer.launcher import LaunchOptions, run_experiment, validator_resources, worker_resources
from trainer.sweep_plan import SweepPlan, TrialPlan
from trainer.sweep_results import TrialOutcome, best_trial, write_results

METRIC, MODE = "dice", "max"


@dataclass(frozen=True)
class SweepOptions:
    out_dir: Path
    concurrent: int = 2
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = 1  # validations a trial always gets before ASHA may stop it
    reduction_factor: int = 2  # ASHA keeps the best 1/reduction_factor of the trials at each rung
    trial_num_cpus: float = 0.1  # a Ray Train trial's own process; its workers and validator ask for theirs
    show_progress: bool = True


def validations_of(trial: TrialPlan) -> int:
    """How many validations a trial that is never stopped reports (epoch 0, every interval, the last)."""
    epochs, every = trial.config.training.epochs, trial.config.validation.interval
    return len(range(0, epochs, every)) + (1 if (epochs - 1) % every else 0)


def run_trial(config: dict[str, Any], plan: SweepPlan, out_dir: str) -> None:
    """The Tune function trainable: one experiment on the shared cache, its Dice reported per validation.

    When ASHA stops the trial, Tune ends it inside ``tune.report`` (a ``SystemExit`` in this
    thread): ``run_experiment``'s ``finally`` then unregisters the experiment and ends its
    validation actor, and Ray Train's workers go with this process. Tune may end the process
    before that ``finally`` has run, so the driver's :class:`SweepProgress` detaches it too.
    """
    trial = plan.trial(int(config["trial"]))
    best = 0.0

    def report(row: dict[str, Any]) -> None:
        nonlocal best
        best = max(best, float(row["mean_dice"]))
        tune.report({METRIC: float(row["mean_dice"]), "best_dice": best, "epoch": int(row["epoch"]),
                     "time_s": float(row["time_s"]), "trial": trial.index})

    info = {**trial_info(plan.name), "values": trial.values}
    opts = LaunchOptions(out_dir=Path(out_dir) / "trials" / trial.name, show_progress=False, info=info,
                         on_validation=report, sweep_trial=True)
    run_experiment(trial.config, opts)


class SweepProgress(tune.Callback):
    """In the driver: one line per validation and per ended trial, and the trial outcomes for the table.

    It also detaches a finished trial's experiment if the trial's own ``finally`` did not get to
    (Tune may end a stopped trial's process first).
    """

    def __init__(self, plan: SweepPlan, show: bool) -> None:
        self.plan, self.show = plan, show
        self.outcomes = [TrialOutcome(t.index, t.name, t.values, t.fingerprint) for t in plan.trials]
        self._ids: dict[str, int] = {}  # Tune trial id -> trial index

    def _say(self, text: str) -> None:
        if self.show:
            print(f"[sweep {time.strftime('%H:%M:%S')}] {text}", flush=True)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        index = int(trial.config["trial"])
        self._ids[trial.trial_id] = index
        self.outcomes[index].state = "running"
        self._say(f"trial {index} started ({trial.trial_id})")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        o = self.outcomes[self._ids[trial.trial_id]]
        o.history.append({"epoch": result["epoch"], "dice": result[METRIC], "time_s": result["time_s"]})
        o.epochs = result["epoch"] + 1
        last_epoch = self.plan.trial(o.index).config.training.epochs - 1
        if result.get("done") and result["epoch"] < last_epoch:  # the scheduler's STOP, before the last epoch
            o.state = "stopped"
        self._say(f"trial {o.index}: epoch {result['epoch']} Dice {result[METRIC]:.3f} (best {o.best_dice:.3f})"
                  + ("  -> stopped early by the scheduler" if o.state == "stopped" else ""))

    def _ended(self, trial: Any, state: str) -> None:
        o = self.outcomes[self._ids[trial.trial_id]]
        if o.state != "stopped":
            o.state = state
        plan = self.plan.trial(o.index)
        left = detach_trial(plan.fingerprint, plan.config.cache.namespace, trial.trial_id)
        self._say(f"trial {o.index} {o.state}" + (f"; detached {left} for it" if left else ""))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial, "done")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        o = self.outcomes[self._ids[trial.trial_id]]
        path = Path(trial.error_file) if trial.error_file else None
        lines = path.read_text().strip().splitlines() if path is not None and path.is_file() else []
        o.error = lines[-1] if lines else "failed (Tune kept no error text)"
        self._ended(trial, "error")
        self._say(f"trial {o.index} error: {o.error} (full text: {path})")


def trial_resources(trial: TrialPlan, opts: SweepOptions) -> PlacementGroupFactory:
    """What Tune places a trial with: an in-process trial's loop and validation, or a Ray Train trial's driver."""
    cfg = trial.config
    if not cfg.training.runs_in_process(sweep_trial=True):
        return PlacementGroupFactory([{"CPU": opts.trial_num_cpus}])
    worker, validator = worker_resources(cfg), validator_resources(cfg)
    gpus = worker.get("GPU", 0.0) + validator["num_gpus"]
    return PlacementGroupFactory([{"CPU": worker["CPU"] + validator["num_cpus"], **({"GPU": gpus} if gpus else {})}])


def make_scheduler(plan: SweepPlan, opts: SweepOptions) -> TrialScheduler:
    if opts.scheduler == "fifo":
        return FIFOScheduler()
    if opts.scheduler != "asha":
        raise ConfigError("--scheduler", opts.scheduler, "asha or fifo")
    most = max(validations_of(t) for t in plan.trials)
    if opts.grace_period < 1 or opts.grace_period >= most:
        raise ConfigError("--grace-period", opts.grace_period, f"at least 1 and below {most}, the validations per trial")
    # max_t one past the last validation: ASHA stops only the trials it judges, never one at its natural end
    return ASHAScheduler(time_attr="training_iteration", metric=METRIC, mode=MODE, max_t=most + 1,
                         grace_period=opts.grace_period, reduction_factor=opts.reduction_factor)


def held_cpus(trial: TrialPlan, opts: SweepOptions) -> float:
    """Ray's CPUs a running trial holds: its placement group, plus a Ray Train trial's workers and validator."""
    cfg = trial.config
    placed = trial_resources(trial, opts).required_resources.get("CPU", 0.0)
    if cfg.training.runs_in_process(sweep_trial=True):
        return placed
    return placed + cfg.training.num_workers * worker_resources(cfg)["CPU"] + validator_resources(cfg)["num_cpus"]


def rotation_room(plan: SweepPlan, opts: SweepOptions, cluster_cpus: float) -> int:
    """Preparation tasks that fit beside the trials Tune runs at once; with none, say so before they start.

    A single run beside which no task fits is refused (``common.cpu_budget``): its pool would never rotate.
    A sweep's trials are many runs at once, each of which fits alone, so the driver warns instead: the
    pool then rotates only between trials.
    """
    cached = [t for t in plan.trials if t.config.cache.enabled]
    if not cached:
        return 0
    task = max(t.config.cache.task_num_cpus for t in cached)
    room = tasks_beside_trials(cluster_cpus, [held_cpus(t, opts) for t in plan.trials], opts.concurrent, task,
                               cache_actors=len({t.fingerprint for t in cached}))
    if room == 0:
        print(f"warning: the trials Tune runs at once (--concurrent {opts.concurrent}) leave no room on the "
              f"cluster's {cluster_cpus:g} CPUs for a preparation task of cache.task_num_cpus={task:g}, so the pool "
              "will not rotate while they train; lower --concurrent or cache.task_num_cpus", flush=True)
    return room


def fill_caches(plan: SweepPlan, show: bool) -> None:
    """Start (or attach to) each fingerprint's cache from the driver and wait until it is warm.

    Trials with ``cache.enabled: false`` (the no-cache baseline) get none: each prepares its own volumes.
    """
    for fp, group in plan.caches().items():
        trials = [t for t in group if t.config.cache.enabled]  # cache.enabled is not in the fingerprint
        if not trials:
            continue
        t0 = time.time()
        cache = SmartCache.from_config(trials[0].config, wait=False)
        status = cache.wait_until_ready(progress=show)
        if show:
            print(f"cache {fp[:12]} warm in {time.time() - t0:.0f} s: {status.items_cached} training and "
                  f"{status.val_items_cached} validation volumes, for trials "
                  f"{', '.join(str(t.index) for t in trials)}", flush=True)


def run_sweep(plan: SweepPlan, opts: SweepOptions) -> list[TrialOutcome]:
    """Run every trial of ``plan`` under Tune on the connected Ray cluster; write and return the results."""
    if opts.concurrent < 1:
        raise ConfigError("--concurrent", opts.concurrent, "at least 1")
    out = opts.out_dir.resolve()
    rotation_room(plan, opts, float(ray.cluster_resources().get("CPU", 0.0)))
    fill_caches(plan, opts.show_progress)
    progress = SweepProgress(plan, opts.show_progress)
    trainable = tune.with_resources(tune.with_parameters(run_trial, plan=plan, out_dir=str(out)),
                                    lambda config: trial_resources(plan.trial(int(config["trial"])), opts))
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search([t.index for t in plan.trials])},
        tune_config=tune.TuneConfig(scheduler=make_scheduler(plan, opts), max_concurrent_trials=opts.concurrent,
                                    reuse_actors=False),  # a stopped trial's process, and its workers, must end
        run_config=tune.RunConfig(name=plan.name, storage_path=str(out / "tune"), callbacks=[progress], verbose=0),
    )
    tuner.fit()
    target = plan.trials[0].config.training.target_dice
    table = write_results(out, plan, progress.outcomes, target)
    if opts.show_progress:
        print(table)
        best = best_trial(progress.outcomes)
        print(f"best: trial {best.index} (Dice {best.best_dice:.3f}); its config: {out / 'best.yaml'}"
              if best else "no trial reported a validation")
    return progress.outcomes

