"""The per-worker training loop that Ray Train runs under DDP (nanoGPT-style, top to bottom).

It uses the same public client as any user's loop (:class:`cache_service.sdk.Experiment`,
protocol in :mod:`cache_service.sdk.protocol`). Each epoch: iterate this rank's crop
batches of the experiment's epoch snapshot (the same pool for every rank, cropped with
the ratio the validation actor published), train, then rank 0 reports the epoch to the
cache, hands the weights to the validation actor, checkpoints, and decides with the
others whether the target Dice has been reached.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from cache_service.sdk import DeviceVolumes, Experiment
from common.config import config_from_dict
from trainer.loader import PreprocessingBatchStream
from trainer.model import AmpPolicy, build_loss, build_model, build_optimizer
from trainer.staging import DeviceStager
from trainer.steps import run_epoch, seed_everything

CHECKPOINT_FILE = "state.pt"


def _agree(flag: bool, device: torch.device) -> bool:
    """Rank 0's decision, shared with every rank so they stop on the same epoch."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item() > 0.5)


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
        state = torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    _unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    return int(state["epoch"]) + 1


def _report(metrics: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler, rank: int) -> None:
    """Every rank reports; rank 0 attaches the checkpoint (model, optimiser, scaler, epoch)."""
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save({"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(), "epoch": metrics["epoch"]}, Path(d) / CHECKPOINT_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def _shared_ratio(validator: Any, rank: int, device: torch.device) -> float:
    """Without a cache: the validation actor's latest ratio as rank 0 reads it, the same on every rank."""
    ratio = ray.get(validator.ratio.remote()) if rank == 0 else 0.0
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ratio
    t = torch.tensor([ratio], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())


def _epoch_batches(cfg: Any, config: dict[str, Any], exp: Experiment | None, validator: Any, epoch: int,
                   rank: int, world: int, device: torch.device,
                   device_volumes: DeviceVolumes | None) -> tuple[Any, float, int]:
    """(batch stream, ratio, pool generation) for one epoch: this rank's crops of the experiment's snapshot
    (through the public API), or, without a cache (the baseline), from a DataLoader whose worker
    processes load and preprocess every volume again."""
    if exp is None:
        ratio = _shared_ratio(validator, rank, device)
        stream = PreprocessingBatchStream(config["records"], config["preprocessor"], ratio, cfg.sampler,
                                          cfg.augmentation, cfg.training.batch_size, cfg.training.loader_workers,
                                          seed=cfg.training.seed, rank=rank, world_size=world, epoch=epoch,
                                          steps=cfg.training.steps_per_epoch)
        return stream, ratio, 0
    batches = exp.batches(epoch, rank=rank, world_size=world, device_volumes=device_volumes)
    return batches, batches.ratio, batches.generation


def train_loop_per_worker(config: dict[str, Any]) -> None:
    cfg = config_from_dict(config["experiment"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed_everything(cfg.training.seed + 1000 * rank, cfg.training.deterministic)
    device = ray.train.torch.get_device()

    model = ray.train.torch.prepare_model(build_model(cfg.training, config["in_channels"], config["num_classes"]))
    optimizer = build_optimizer(cfg.training, model.parameters())
    loss_fn = build_loss(cfg.training.loss)
    amp = AmpPolicy.for_device(device, cfg.training)
    scaler = amp.scaler()
    start_epoch = _restore(model, optimizer, scaler, config.get("resume_from"))
    # crops cut on the training device (sampler.device: cuda) need no host-to-device copy; otherwise
    # batches go through pinned, reused buffers and a copy stream on CUDA (a pass-through on CPU)
    on_device = cfg.sampler.device == "cuda" and cfg.cache.enabled
    device_volumes = DeviceVolumes(device, cfg.sampler.gpu_cache_bytes) if on_device else None
    stager = None if on_device else DeviceStager(device)

    exp: Experiment | None = config["experiment_handle"]  # None for the baseline: no cache at all
    validator = ray.get_actor(config["validator_name"], namespace=cfg.cache.namespace)
    t_start = config["t_start"]
    if rank == 0:  # records a restart of the worker group (and its cost) if this is one
        ray.get(validator.trainer_started.remote(start_epoch, time.time()))
    pending, last_validated = None, start_epoch - cfg.validation.interval
    for epoch in range(start_epoch, cfg.training.epochs):
        stream, ratio, generation = _epoch_batches(cfg, config, exp, validator, epoch, rank, world, device,
                                                   device_volumes)
        with stream as batches:
            stats = run_epoch(model, batches, loss_fn, optimizer, amp, scaler, device, epoch, ratio, generation,
                              stager=stager)
            stats.wait_seconds = batches.wait_seconds

        stop = False
        if rank == 0:
            if exp is not None:
                exp.finish_epoch(epoch, {"loss": stats.loss}, rank=rank)
            if pending is not None and ray.wait([pending], timeout=0)[0]:
                ray.get(pending)  # a validation that failed stops the run with its error
                pending = None
            due = epoch - last_validated >= cfg.validation.interval or epoch == cfg.training.epochs - 1
            if due and (cfg.training.deterministic or pending is None):  # never queue behind a validation
                last_validated = epoch
                weights = ray.put({k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()})
                pending = validator.validate.remote(epoch, weights, time.time() - t_start)
                if cfg.training.deterministic:  # the ratio sequence must not depend on timing
                    ray.get(pending)
            latest = ray.get(validator.best.remote())
            stop = latest is not None and latest >= cfg.training.target_dice
            limit = cfg.training.time_limit_s
            stop = stop or (limit is not None and time.time() - t_start > limit)
        stop = _agree(stop, device)
        metrics = {"epoch": epoch, "loss": stats.loss, "steps": stats.steps, "crops": stats.crops,
                   "positive_fraction": stats.positive_fraction, "ratio": stats.ratio,
                   "generation": stats.generation, "step_seconds": stats.step_seconds,
                   "wait_seconds": stats.wait_seconds, "time_s": time.time() - t_start, "rank": rank,
                   "param_checksum": _checksum(model)}
        validator.record_train.remote(metrics)
        last = stop or epoch == cfg.training.epochs - 1
        if last or (epoch + 1) % cfg.training.checkpoint_every == 0:
            _report(metrics, model, optimizer, scaler, rank)  # a collective: every rank takes this branch
        if stop:
            break
    if pending is not None:
        ray.get(pending)
