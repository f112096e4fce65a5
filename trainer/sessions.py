"""Where a training worker runs: what the loop asks of it (rank, device, checkpoints) in one small interface.

The loop (:func:`trainer.worker.run_worker`) is the same in both places. Under Ray Train
(:class:`RayTrainSession`) it is one of N DDP workers whose checkpoints Ray Train keeps and
restores after a restart. In the caller's process (:class:`LocalSession`, ``training.runner:
in_process``) it is the only worker; checkpoints go to ``OUT/checkpoints/`` for ``--resume``,
and nothing restarts it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Protocol

import ray.train
import ray.train.torch
import torch

from common.config import ExperimentConfig
from common.errors import ConfigError
from trainer.checkpoints import KEEP_CHECKPOINTS, LOCAL_FOLDER


class TrainSession(Protocol):
    """What the loop needs from the place it runs in."""

    rank: int
    world_size: int
    device: torch.device

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module: ...

    def restart_checkpoint(self) -> Path | None:
        """The checkpoint folder to carry on from after a restart of this worker, if there was one."""
        ...

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        """End of an epoch: the metrics, and a checkpoint folder to keep (read during the call only)."""
        ...


class RayTrainSession:
    """One Ray Train worker: DDP placement and device from Ray Train, checkpoints kept by Ray Train."""

    def __init__(self) -> None:
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model)

    def restart_checkpoint(self) -> Path | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        return Path(checkpoint.to_directory())

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        checkpoint = None if checkpoint_dir is None else ray.train.Checkpoint.from_directory(str(checkpoint_dir))
        ray.train.report(metrics, checkpoint=checkpoint)


def local_device(cfg: ExperimentConfig) -> torch.device:
    """The first visible GPU when training asks for one (Ray sets CUDA_VISIBLE_DEVICES for a placed trial)."""
    if not cfg.training.use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("training.use_gpu", True, "a CUDA device visible to this process for training.runner="
                          "in_process; set training.use_gpu=false or run where torch sees a GPU")
    return torch.device("cuda", 0)


class LocalSession:
    """The only worker, in this process: rank 0 of 1; the newest checkpoints under ``OUT/checkpoints``."""

    def __init__(self, cfg: ExperimentConfig, out_dir: Path) -> None:
        self.rank, self.world_size = 0, 1
        self.device = local_device(cfg)
        self.folder = out_dir / LOCAL_FOLDER
        # the worker's CPU share, as Ray gives a Ray Train worker through OMP_NUM_THREADS
        torch.set_num_threads(max(1, int(cfg.training.worker_num_cpus)))

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def restart_checkpoint(self) -> Path | None:
        return None  # nothing restarts an in-process run; --resume names its checkpoint instead

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is None:
            return
        target = self.folder / f"checkpoint_{int(metrics['epoch']):06d}"
        shutil.copytree(checkpoint_dir, target, dirs_exist_ok=True)
        for old in sorted(p for p in self.folder.glob("checkpoint_*") if p.is_dir())[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
