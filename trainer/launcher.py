"""Start one experiment: attach to (or create) the shared cache, the validation service and
the training (Ray Train workers, or one worker in this process), then gather everything into a report.

This is the driver side of ``smartcache train``. It owns no training arithmetic; it wires
the pieces together, checks the request fits the cluster before anything starts, and
turns what the workers and the validation actor recorded into report files.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import ray
import ray.train
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cache_service.sdk import Experiment, SmartCache
from common.catalog import Catalog, fingerprint, load_catalog
from common.config import ExperimentConfig
from common.cpu_budget import cpu_budget, require_rotation_fits
from common.errors import CacheUnavailableError, ConfigError
from common.heap import heap_env, keep_freed_memory
from common.ids import check_experiment_id, contained_folder
from common.preprocess import build_preprocessor
from trainer.checkpoints import KEEP_CHECKPOINTS, newest_loadable
from trainer.failures import TrainingFailedError, WorkerFailureNote
from trainer.predict import MODEL_FILE, save_model_file
from trainer.report import RunReport, format_summary, summarise, write_outputs
from trainer.progress import fit_with_progress
from trainer.sessions import LocalSession
from trainer.validation_service import ValidationService
from trainer.validator_link import ActorValidator, LocalValidator, ValidatorLink
from trainer.worker import WorkerInput, run_worker, train_loop_per_worker


VALIDATOR_MAX_RESTARTS = 5


@dataclass(frozen=True)
class LaunchOptions:
    out_dir: Path
    resume: bool = False
    show_progress: bool = True
    info: dict[str, Any] | None = None  # more for the cache registry (a sweep trial says its sweep and trial)
    # called with each validation row (epoch, mean_dice, time_s, ...) as it arrives: a Tune trial reports it
    on_validation: Callable[[dict[str, Any]], None] | None = None
    sweep_trial: bool = False  # training.runner=auto trains a one-worker sweep trial in its own process


def in_channels_of(catalog: Catalog) -> int:
    """The network's input channels, read from the first training image's header (4-D: the last axis)."""
    shape = nib.load(catalog.train[0].image).shape
    return 1 if len(shape) == 3 else int(shape[-1])


def check_fits_cluster(cfg: ExperimentConfig, in_process: bool = False) -> None:
    """Refuse a request the cluster cannot place, instead of waiting forever for resources, and one beside
    which the cache's preparation tasks could never start (its pool would not rotate)."""
    resources = ray.cluster_resources()
    cpus = float(resources.get("CPU", 0))
    need = cfg.training.num_workers * cfg.training.worker_num_cpus
    if need > cpus:
        raise ConfigError("training.num_workers", cfg.training.num_workers,
                          f"{cfg.training.num_workers} workers x {cfg.training.worker_num_cpus} CPU need {need:g} "
                          f"CPUs but the cluster has {cpus:g}; lower training.num_workers or "
                          "training.worker_num_cpus")
    gpus = float(resources.get("GPU", 0))
    train_gpus = cfg.training.num_workers * cfg.training.worker_num_gpus
    val_gpus = validator_resources(cfg)["num_gpus"]
    if cfg.training.use_gpu and gpus < train_gpus + val_gpus:
        raise ConfigError("training.use_gpu", True,
                          f"the cluster has {gpus:g} GPUs; {cfg.training.num_workers} workers x "
                          f"{cfg.training.worker_num_gpus:g} GPU + {val_gpus:g} for validation need "
                          f"{train_gpus + val_gpus:g}. Share GPUs (e.g. training.worker_num_gpus=0.5 and "
                          "validation.num_gpus=0.5 on one GPU), validate on CPU (validation.num_gpus=0), "
                          "use fewer workers, or set training.use_gpu=false")
    if cfg.cache.enabled:
        require_rotation_fits(cpu_budget(cfg, cpus, in_process, node_cpus=os.cpu_count() or 1))


def validator_resources(cfg: ExperimentConfig) -> dict[str, float]:
    """The validation actor's Ray resources: GPUs whenever training has them (validation.num_gpus)."""
    return {"num_cpus": cfg.validation.num_cpus, "num_gpus": cfg.validation.gpus_for(cfg.training.use_gpu)}


def worker_resources(cfg: ExperimentConfig) -> dict[str, float]:
    resources = {"CPU": cfg.training.worker_num_cpus}
    if cfg.training.use_gpu:
        resources["GPU"] = cfg.training.worker_num_gpus
    return resources


def _trainer(inp: WorkerInput, name: str) -> TorchTrainer:
    """DDP workers; a failed worker makes Ray Train restart the group from the last checkpoint (max_failures)."""
    cfg = inp.config
    backend = "nccl" if cfg.training.use_gpu else "gloo"
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=inp.loop_config(),
        torch_config=TorchConfig(backend=backend),
        scaling_config=ScalingConfig(num_workers=cfg.training.num_workers, use_gpu=cfg.training.use_gpu,
                                     resources_per_worker=worker_resources(cfg)),
        run_config=RunConfig(name=name, storage_path=inp.storage_path,
                             worker_runtime_env={"env_vars": heap_env(cfg.training.heap_keep_mib)},
                             checkpoint_config=CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
                             failure_config=FailureConfig(max_failures=cfg.training.max_failures),
                             callbacks=[WorkerFailureNote(inp.validator_name, cfg.cache.namespace)]),
    )


def _faults_of(cache: Any, experiment_id: str, run_faults: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The run's own fault log plus the cache restarts its registry counted for this experiment, by time."""
    if cache is None:  # no cache (the baseline): only the run's own faults
        return sorted(run_faults, key=lambda f: f["time"])
    try:
        status = cache.status()
        exp = next((e for e in status.experiments if e.experiment_id == experiment_id), None)
        cache_faults = [f.model_dump() for f in exp.faults if f.kind == "cache"] if exp else []
    except CacheUnavailableError:
        cache_faults = []
    return sorted(run_faults + cache_faults, key=lambda f: f["time"])


def _require_usable(status: Any, catalog: Catalog) -> None:
    """Stop before training when quarantine left nothing to train or validate on."""
    for split, cached in (("train", status.items_cached), ("val", status.val_items_cached)):
        if cached == 0:
            errors = "; ".join(q.error for q in status.quarantined if q.split == split)
            raise TrainingFailedError(f"no {split} case of {catalog.root} could be prepared, so there is nothing to "
                                      f"{'train' if split == 'train' else 'validate'} on: {errors or 'none cached'}")


def _short(err: BaseException) -> str:
    """The lines of a Ray Train failure a person needs: the summary and the errors, no stack frames."""
    keep = [line for line in str(err).splitlines()
            if line.strip() and not line.startswith((" ", "\t", "Traceback", "During handling"))]
    return "\n".join(keep[:8])


def _open_experiment(cfg: ExperimentConfig, catalog: Catalog,
                     info: dict[str, Any] | None = None) -> tuple[SmartCache, Experiment, float]:
    """Attach to (or create) the shared cache and open the experiment without waiting for the fill, so the
    trainers start up while it fills (their first snapshot waits for it); (cache, experiment, fill start)."""
    cache = SmartCache.from_config(cfg, catalog=catalog, wait=False)
    t_fill = time.time()
    exp = cache.experiment(cfg.name, steps=cfg.training.steps_per_epoch,
                           info={"lr": cfg.training.lr, "optimizer": cfg.training.optimizer, **(info or {})}).open()
    return cache, exp, t_fill


@dataclass
class _Fill:
    """The driver's wait for the pool's first fill, run while the trainers start up (``fit_with_progress``'s
    ``warm_up``): a progress bar, a warning per quarantined case, a stop if nothing is left to train or
    validate on or if the experiment's patch is larger than a training volume, and the seconds it took
    for the report (0 without a cache). The trainers wait for its word through the validation service."""

    cache: SmartCache | None
    experiment: Experiment | None
    catalog: Catalog
    validator: ValidatorLink
    show_progress: bool
    started: float  # when the cache was created or joined
    seconds: float = 0.0

    def wait(self) -> None:
        try:
            self._check()
        except BaseException:
            self.validator.decide_start(False)  # the workers end quietly; this error is the run's
            raise
        self.validator.decide_start(True)

    def _check(self) -> None:
        if self.cache is None or self.experiment is None:
            return
        # through the experiment's handle, which re-attaches while the cache restarts (for up to
        # cache.recover_timeout_s), as the trainers' calls do: a restart during the fill is waited out
        status = self.experiment.wait_until_ready(progress=self.show_progress)
        for q in status.quarantined:
            print(f"warning: {q.item_id} ({q.split}) is quarantined and left out: {q.error}")
        _require_usable(status, self.catalog)
        settings = self.experiment.settings  # opened on a pool still filling: check the patch on the whole pool
        self.cache.check_patch(settings.sampler.patch_size, settings.patch_parameter, status)
        self.seconds = time.time() - self.started


def _start_validator(cfg: ExperimentConfig, fp: str, experiment_id: str, num_classes: int, in_channels: int,
                     t_start: float, state_dir: Path, own_volumes: Any, in_process: bool) -> ValidatorLink:
    """The experiment's validation service. In process: in this process, beside the loop. Otherwise an
    actor, restarted in place if its process dies (calls in flight are retried there); it reads its record
    back from ``state_dir``, so it stays on this node, where that folder is."""
    args = (cfg, fp, experiment_id, num_classes, in_channels, t_start, str(state_dir), own_volumes)
    if in_process:
        return LocalValidator(ValidationService(*args))
    return ActorValidator(ray.remote(ValidationService).options(
        name=f"validator-{experiment_id}", namespace=cfg.cache.namespace, max_concurrency=2,
        max_restarts=VALIDATOR_MAX_RESTARTS, max_task_retries=-1,
        scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False),
        runtime_env={"env_vars": heap_env(cfg.training.heap_keep_mib)}, **validator_resources(cfg)).remote(*args))


def _release(validator: ValidatorLink | None, exp: Experiment | None) -> None:
    """Every way out of a run: end the validator, detach the experiment (an unreachable cache has no one to tell)."""
    if validator is not None:
        validator.close()
    try:
        if exp is not None:
            exp.close()
    except CacheUnavailableError:
        pass


def _fit(inp: WorkerInput, validator: ValidatorLink, experiment_id: str, opts: LaunchOptions,
         in_process: bool) -> Callable[[], Any]:
    """What trains: the loop in this process, or Ray Train's workers (whose ``fit`` returns a Result)."""
    if in_process:
        session = LocalSession(inp.config, opts.out_dir)
        return lambda: run_worker(inp, session, validator)
    return _trainer(inp, experiment_id).fit


def run_experiment(cfg: ExperimentConfig, opts: LaunchOptions) -> RunReport:
    """Run one experiment on the connected Ray cluster and write its report to ``opts.out_dir``."""
    t_start = time.time()
    check_experiment_id(cfg.name, "experiment name (config field 'name')")
    catalog = load_catalog(cfg.data.dataset_dir, cfg.data)
    if not catalog.val:
        raise ConfigError("data.val_fraction", cfg.data.val_fraction, "a split with at least one validation case")
    in_process = cfg.training.runs_in_process(opts.sweep_trial)
    check_fits_cluster(cfg, in_process)
    if cfg.cache.enabled:
        cache, exp, t_fill = _open_experiment(cfg, catalog, opts.info)
        fp, experiment_id = cache.fingerprint, exp.id
    else:  # the baseline: no cache actor at all; trainers and validation load and preprocess themselves
        cache, exp, t_fill = None, None, t_start
        fp, experiment_id = fingerprint(catalog, cfg.preprocessing), f"{cfg.name}-{uuid.uuid4().hex[:6]}"
    validator = None
    if in_process:  # this process trains and validates: before its threads start, so that they share one arena
        keep_freed_memory(cfg.training.heap_keep_mib)
    try:  # from here on the experiment is registered: every way out releases it (and the validator)
        # the cache's own chain (CT statistics are read back from the stats folder, not recomputed): without a
        # cache, trainers and validation run it themselves, and model.pt records its normalisation for predict
        prep = build_preprocessor(catalog, cfg.preprocessing, cfg.sampler.patch_size, cfg.cache.stats_path(), fp)
        num_classes, in_channels = catalog.num_classes, in_channels_of(catalog)
        own_volumes = None if cfg.cache.enabled else (list(catalog.val), prep)
        state_dir = contained_folder(opts.out_dir / "state", experiment_id)  # inside --out whatever the id
        validator = _start_validator(cfg, fp, experiment_id, num_classes, in_channels, t_start, state_dir,
                                     own_volumes, in_process)
        resume_from = newest_loadable(opts.out_dir) if opts.resume else None
        # the baseline (no cache): workers prepare every volume again every epoch
        inp = WorkerInput(cfg, exp, f"validator-{experiment_id}", num_classes, in_channels, t_start,
                          resume_from=resume_from.path if resume_from is not None else None,
                          records=() if cfg.cache.enabled else tuple(catalog.train),
                          preprocessor=None if cfg.cache.enabled else prep,
                          storage_path=str((opts.out_dir / "ray_results").resolve()))
        fill = _Fill(cache, exp, catalog, validator, opts.show_progress, t_fill)
        result = fit_with_progress(_fit(inp, validator, experiment_id, opts, in_process), validator, cfg,
                                   opts.show_progress, opts.on_validation, warm_up=fill.wait)
        _raise_if_failed(result)
        rows, val_rows = validator.train_rows(), validator.history()
        example, best_weights = validator.example_case(), validator.best_weights()
        faults = _faults_of(cache, experiment_id, validator.faults())
    except (ray.exceptions.RayError, ray.train.TrainingFailedError, CacheUnavailableError) as err:
        raise TrainingFailedError(f"training of {experiment_id} failed: {_short(err)}") from err
    finally:
        _release(validator, exp)
    resumed = None
    if resume_from is not None and rows:
        resumed = min(r["epoch"] for r in rows)
    report = summarise(cfg, catalog, experiment_id, rows, val_rows, time.time() - t_start, fill.seconds, resumed,
                       faults)
    write_outputs(opts.out_dir, report, rows, val_rows, example)
    if best_weights is not None:
        save_model_file(opts.out_dir / MODEL_FILE, best_weights, cfg, catalog.num_classes, in_channels,
                        catalog.labels, prep.norm, prep.stats)
    if opts.show_progress:
        print(format_summary(report))
    return report


def _raise_if_failed(result: Any) -> None:
    if getattr(result, "error", None) is not None:
        raise TrainingFailedError(f"training failed: {result.error}") from result.error
