"""The per-worker training loop, run by Ray Train under DDP or alone in the caller's process (nanoGPT-style).

Where it runs is its :class:`trainer.sessions.TrainSession` (rank, device, checkpoints), and
how it reaches the validation service its :class:`trainer.validator_link.ValidatorLink`. It
uses the same public client as any user's loop (:class:`cache_service.sdk.Experiment`,
protocol in :mod:`cache_service.sdk.protocol`). Each epoch: iterate this rank's crop
batches of the experiment's epoch snapshot (the same pool for every rank, cropped with
the ratio the validation service published), train, then rank 0 reports the epoch to the
cache, hands the weights to the validation service, checkpoints, and decides with the
others whether the target Dice has been reached.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
import torch.distributed as dist

from cache_service.sdk import DeviceVolumes, Experiment
from common.catalog import Record
from common.config import ExperimentConfig
from common.errors import StorageError
from common.preprocess import Preprocessor
from trainer.checkpoints import load_checkpoint, write_checkpoint
from trainer.failures import NonFiniteLossError
from trainer.loader import PreprocessingBatchStream
from trainer.model import AmpPolicy, build_loss, build_model, build_optimizer
from trainer.sessions import RayTrainSession, TrainSession
from trainer.staging import DeviceStager
from trainer.steps import run_epoch, seed_everything
from trainer.validator_link import ActorValidator, Pending, ValidatorLink

#: the one key of Ray Train's ``train_loop_config`` (Ray records that argument as a dict)
INPUT_KEY = "input"
START_POLL_S = 0.1  # seconds between a starting worker's asks whether the launcher let it train


@dataclass(frozen=True)
class WorkerInput:
    """Everything a training worker is started with; pickled to each worker as it is (no dict round trip)."""

    config: ExperimentConfig
    experiment: Experiment | None
    """The experiment the driver opened on the shared cache; None for the baseline (no cache at all)."""
    validator_name: str
    num_classes: int
    in_channels: int
    t_start: float
    """The driver's start time: the run's clock for time_s and training.time_limit_s."""
    resume_from: str | None = None
    """The checkpoint folder to resume from (``--resume``); Ray Train's own restarts use its checkpoint."""
    records: tuple[Record, ...] = ()
    """Baseline only: the training cases each worker loads and preprocesses every epoch."""
    preprocessor: Preprocessor | None = None
    """Baseline only: the cache's chain, run by the workers' DataLoader processes."""
    storage_path: str = ""
    """Ray Train's run folder (named in a StorageError when a checkpoint cannot be written)."""

    def loop_config(self) -> dict[str, "WorkerInput"]:
        """As Ray Train's ``train_loop_config``, which it expects (and records) as a dict."""
        return {INPUT_KEY: self}


def _agree(flag: bool, device: torch.device) -> bool:
    """Rank 0's decision, shared with every rank so they stop on the same epoch."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item() > 0.5)


def _any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on any, so all ranks stop together instead of waiting in a collective."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0.5)


def _require_finite(loss: float, epoch: int, cfg: Any, device: torch.device) -> None:
    """Stop every rank in the epoch whose loss went NaN or infinite (on any rank): training on is wasted time."""
    if _any_rank(not math.isfinite(loss), device):
        raise NonFiniteLossError(epoch, loss, cfg.training.lr, cfg.training.amp)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The network itself, whether or not DDP wraps it."""
    return model.module if hasattr(model, "module") else model


def _checksum(model: torch.nn.Module) -> float:
    """Sum of all parameters in float64: equal on every rank iff DDP kept the replicas in step."""
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def _restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
             session: TrainSession, resume_from: str | None) -> int:
    """Load the checkpoint of a worker restart, or the one to resume from; returns the next epoch."""
    folder = session.restart_checkpoint() or (Path(resume_from) if resume_from else None)
    if folder is None:
        return 0
    state = load_checkpoint(folder)
    _unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    return int(state["epoch"]) + 1


def _report(metrics: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler, session: TrainSession, storage: str) -> None:
    """Every rank reports; rank 0 attaches the checkpoint (model, optimiser, scaler, epoch), which the
    session copies under ``storage`` (the run folder)."""
    if session.rank != 0:
        session.report(metrics, None)
        return
    with tempfile.TemporaryDirectory() as d:
        write_checkpoint(Path(d), {"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                                   "scaler": scaler.state_dict(), "epoch": metrics["epoch"]})
        try:  # the session copies the folder into the run folder here; a full disk fails in that copy
            session.report(metrics, Path(d))
        except OSError as err:
            where = err.filename or storage
            raise StorageError(str(where), f"could not store the epoch {metrics['epoch']} checkpoint "
                                           f"({err.strerror or err}); free space there or use another --out") from err


def _shared_ratio(validator: ValidatorLink, rank: int, device: torch.device) -> float:
    """Without a cache: the validation service's latest ratio as rank 0 reads it, the same on every rank."""
    ratio = validator.ratio() if rank == 0 else 0.0
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ratio
    t = torch.tensor([ratio], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())


def _epoch_batches(inp: WorkerInput, validator: ValidatorLink, epoch: int, rank: int, world: int,
                   device: torch.device, device_volumes: DeviceVolumes | None) -> tuple[Any, float, int]:
    """(batch stream, ratio, pool generation) for one epoch: this rank's crops of the experiment's snapshot
    (through the public API), or, without a cache (the baseline), from a DataLoader whose worker
    processes load and preprocess every volume again."""
    cfg, exp = inp.config, inp.experiment
    if exp is None:
        ratio = _shared_ratio(validator, rank, device)
        assert inp.preprocessor is not None, "the launcher hands the baseline's workers the cache's chain"
        stream = PreprocessingBatchStream(inp.records, inp.preprocessor, ratio, cfg.sampler,
                                          cfg.augmentation, cfg.training.batch_size, cfg.training.loader_workers,
                                          seed=cfg.training.seed, rank=rank, world_size=world, epoch=epoch,
                                          steps=cfg.training.steps_per_epoch)
        return stream, ratio, 0
    batches = exp.batches(epoch, rank=rank, world_size=world, device_volumes=device_volumes)
    return batches, batches.ratio, batches.generation


@dataclass
class _Validations:
    """Rank 0's validation bookkeeping across epochs: the one in flight and the epoch last sent."""

    last_validated: int
    pending: Pending | None = None


def _rank0_epoch_end(inp: WorkerInput, validator: ValidatorLink, vals: _Validations, epoch: int,
                     model: torch.nn.Module, loss: float) -> bool:
    """Rank 0's duties after an epoch: report it to the cache, hand the weights to the validation actor
    (never queueing behind a running validation unless deterministic, or at the last epoch, whose
    weights are always validated), and decide whether to stop."""
    cfg, exp = inp.config, inp.experiment
    if exp is not None:
        exp.finish_epoch(epoch, {"loss": loss}, rank=0)
    last = epoch == cfg.training.epochs - 1
    if vals.pending is not None and (last or vals.pending.done()):
        vals.pending.result()  # a validation that failed stops the run with its error; the last epoch's waits
        vals.pending = None
    due = epoch - vals.last_validated >= cfg.validation.interval or last
    if due and (cfg.training.deterministic or vals.pending is None):
        vals.last_validated = epoch
        weights = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
        vals.pending = validator.validate(epoch, weights, time.time() - inp.t_start)
        if cfg.training.deterministic:  # the ratio sequence must not depend on timing
            vals.pending.result()
    best = validator.best()
    limit = cfg.training.time_limit_s
    return (best is not None and best >= cfg.training.target_dice) or (
        limit is not None and time.time() - inp.t_start > limit)


def _placement(cfg: ExperimentConfig, device: torch.device) -> tuple[DeviceVolumes | None, DeviceStager | None]:
    """Crops cut on the training device (sampler.device: cuda) need no host-to-device copy; otherwise
    batches go through pinned, reused buffers and a copy stream on CUDA (a pass-through on CPU)."""
    if cfg.sampler.device == "cuda" and cfg.cache.enabled:
        return DeviceVolumes(device, cfg.sampler.gpu_cache_bytes), None
    return None, DeviceStager(device)


def _launcher_says_go(validator: ValidatorLink) -> bool:
    """Wait for the launcher's word: it decides once the cache's fill is done and checked, while this worker
    started up beside it. A validation service already gone means the launcher has ended the run."""
    while True:
        try:
            go = validator.may_start()
        except ray.exceptions.RayActorError:
            return False
        if go is not None:
            return go
        time.sleep(START_POLL_S)


def train_loop_per_worker(config: dict[str, WorkerInput]) -> None:
    """Ray Train's entry point: this worker's session and the experiment's validation actor, then the loop."""
    inp = config[INPUT_KEY]
    try:
        handle = ray.get_actor(inp.validator_name, namespace=inp.config.cache.namespace)
    except ValueError:  # the launcher has closed it: the run is over, there is nothing to train for
        return
    run_worker(inp, RayTrainSession(), ActorValidator(handle))


def run_worker(inp: WorkerInput, session: TrainSession, validator: ValidatorLink) -> None:
    """One worker's run: build, restore, then per epoch train, let rank 0 validate and decide, checkpoint."""
    cfg = inp.config
    rank, world, device = session.rank, session.world_size, session.device
    seed_everything(cfg.training.seed + 1000 * rank, cfg.training.deterministic)

    model = session.prepare_model(build_model(cfg.training, inp.in_channels, inp.num_classes))
    optimizer = build_optimizer(cfg.training, model.parameters())
    loss_fn = build_loss(cfg.training.loss)
    amp = AmpPolicy.for_device(device, cfg.training)
    if rank == 0:
        amp.warn_if_emulated()
    scaler = amp.scaler()
    start_epoch = _restore(model, optimizer, scaler, session, inp.resume_from)
    device_volumes, stager = _placement(cfg, device)
    if not _launcher_says_go(validator):  # the run failed while this worker started (the launcher says why)
        return

    if rank == 0:  # records a restart of the worker group (and its cost) if this is one
        validator.trainer_started(start_epoch, time.time())
    vals = _Validations(last_validated=start_epoch - cfg.validation.interval)
    for epoch in range(start_epoch, cfg.training.epochs):
        stream, ratio, generation = _epoch_batches(inp, validator, epoch, rank, world, device, device_volumes)
        with stream as batches:
            stats = run_epoch(model, batches, loss_fn, optimizer, amp, scaler, device, epoch, ratio, generation,
                              stager=stager)
            stats.wait_seconds = batches.wait_seconds
        _require_finite(stats.loss, epoch, cfg, device)
        stop = _agree(_rank0_epoch_end(inp, validator, vals, epoch, model, stats.loss) if rank == 0 else False,
                      device)
        metrics = stats.metrics_row(time.time() - inp.t_start, rank, _checksum(model))
        validator.record_train(metrics)
        if stop or epoch == cfg.training.epochs - 1 or (epoch + 1) % cfg.training.checkpoint_every == 0:
            _report(metrics, model, optimizer, scaler, session, inp.storage_path)  # a collective: every rank
        if stop:
            break
    if vals.pending is not None:
        vals.pending.result()
