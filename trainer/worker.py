"""The per-worker training loop that Ray Train runs under DDP (nanoGPT-style, top to bottom).

It uses the same public client as any user's loop (:class:`cache_service.sdk.Experiment`,
protocol in :mod:`cache_service.sdk.protocol`). Each epoch: iterate this rank's crop
batches of the experiment's epoch snapshot (the same pool for every rank, cropped with
the ratio the validation actor published), train, then rank 0 reports the epoch to the
cache, hands the weights to the validation actor, checkpoints, and decides with the
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
import ray.train
import ray.train.torch
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
from trainer.staging import DeviceStager
from trainer.steps import run_epoch, seed_everything

#: the one key of Ray Train's ``train_loop_config`` (Ray records that argument as a dict)
INPUT_KEY = "input"


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
             resume_from: str | None) -> int:
    """Load Ray Train's checkpoint (after a worker restart) or the one to resume from; returns the next epoch."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and resume_from:
        checkpoint = ray.train.Checkpoint.from_directory(resume_from)
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as d:
        state = load_checkpoint(d)
    _unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    return int(state["epoch"]) + 1


def _report(metrics: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler, rank: int, storage: str) -> None:
    """Every rank reports; rank 0 attaches the checkpoint (model, optimiser, scaler, epoch), which Ray Train
    copies under ``storage`` (the run folder)."""
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        write_checkpoint(Path(d), {"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                                   "scaler": scaler.state_dict(), "epoch": metrics["epoch"]})
        try:  # Ray Train copies the folder into the run folder here; a full disk fails in that copy
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        except OSError as err:
            where = err.filename or storage
            raise StorageError(str(where), f"could not store the epoch {metrics['epoch']} checkpoint "
                                           f"({err.strerror or err}); free space there or use another --out") from err


def _shared_ratio(validator: Any, rank: int, device: torch.device) -> float:
    """Without a cache: the validation actor's latest ratio as rank 0 reads it, the same on every rank."""
    ratio = ray.get(validator.ratio.remote()) if rank == 0 else 0.0
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ratio
    t = torch.tensor([ratio], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())


def _epoch_batches(inp: WorkerInput, validator: Any, epoch: int, rank: int, world: int, device: torch.device,
                   device_volumes: DeviceVolumes | None) -> tuple[Any, float, int]:
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
    pending: ray.ObjectRef | None = None


def _rank0_epoch_end(inp: WorkerInput, validator: Any, vals: _Validations, epoch: int, model: torch.nn.Module,
                     loss: float) -> bool:
    """Rank 0's duties after an epoch: report it to the cache, hand the weights to the validation actor
    (never queueing behind a running validation unless deterministic, or at the last epoch, whose
    weights are always validated), and decide whether to stop."""
    cfg, exp = inp.config, inp.experiment
    if exp is not None:
        exp.finish_epoch(epoch, {"loss": loss}, rank=0)
    last = epoch == cfg.training.epochs - 1
    if vals.pending is not None and (last or ray.wait([vals.pending], timeout=0)[0]):
        ray.get(vals.pending)  # a validation that failed stops the run with its error; the last epoch's waits
        vals.pending = None
    due = epoch - vals.last_validated >= cfg.validation.interval or last
    if due and (cfg.training.deterministic or vals.pending is None):
        vals.last_validated = epoch
        weights = ray.put({k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()})
        vals.pending = validator.validate.remote(epoch, weights, time.time() - inp.t_start)
        if cfg.training.deterministic:  # the ratio sequence must not depend on timing
            ray.get(vals.pending)
    best = ray.get(validator.best.remote())
    limit = cfg.training.time_limit_s
    return (best is not None and best >= cfg.training.target_dice) or (
        limit is not None and time.time() - inp.t_start > limit)


def _placement(cfg: ExperimentConfig, device: torch.device) -> tuple[DeviceVolumes | None, DeviceStager | None]:
    """Crops cut on the training device (sampler.device: cuda) need no host-to-device copy; otherwise
    batches go through pinned, reused buffers and a copy stream on CUDA (a pass-through on CPU)."""
    if cfg.sampler.device == "cuda" and cfg.cache.enabled:
        return DeviceVolumes(device, cfg.sampler.gpu_cache_bytes), None
    return None, DeviceStager(device)


def train_loop_per_worker(config: dict[str, WorkerInput]) -> None:
    """One worker's run: build, restore, then per epoch train, let rank 0 validate and decide, checkpoint."""
    inp = config[INPUT_KEY]
    cfg = inp.config
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed_everything(cfg.training.seed + 1000 * rank, cfg.training.deterministic)
    device = ray.train.torch.get_device()

    model = ray.train.torch.prepare_model(build_model(cfg.training, inp.in_channels, inp.num_classes))
    optimizer = build_optimizer(cfg.training, model.parameters())
    loss_fn = build_loss(cfg.training.loss)
    amp = AmpPolicy.for_device(device, cfg.training)
    scaler = amp.scaler()
    start_epoch = _restore(model, optimizer, scaler, inp.resume_from)
    device_volumes, stager = _placement(cfg, device)

    validator = ray.get_actor(inp.validator_name, namespace=cfg.cache.namespace)
    if rank == 0:  # records a restart of the worker group (and its cost) if this is one
        ray.get(validator.trainer_started.remote(start_epoch, time.time()))
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
        validator.record_train.remote(metrics)
        if stop or epoch == cfg.training.epochs - 1 or (epoch + 1) % cfg.training.checkpoint_every == 0:
            _report(metrics, model, optimizer, scaler, rank, inp.storage_path)  # a collective: every rank
        if stop:
            break
    if vals.pending is not None:
        ray.get(vals.pending)
