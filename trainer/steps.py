"""One optimisation step and one epoch over a batch stream, free of Ray.

The worker loop (``trainer/worker.py``) only decides *which* batches and *when* to
validate; the arithmetic lives here so it reads like a plain PyTorch loop and can be
unit-tested on CPU in seconds.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from trainer.model import AmpPolicy
from trainer.staging import DeviceStager, prefetch_to_device


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, numpy and torch; with ``deterministic`` pin torch's algorithms, otherwise let
    cuDNN time its convolution algorithms once per input shape (crops have one shape, so this pays)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True


def train_step(model: torch.nn.Module, batch: Mapping[str, torch.Tensor], loss_fn: torch.nn.Module,
               optimizer: torch.optim.Optimizer, amp: AmpPolicy, scaler: torch.amp.GradScaler,
               device: torch.device) -> torch.Tensor:
    """Forward under autocast, Dice loss, scaled backward, optimiser step.

    Returns the loss as a detached device tensor: reading it on the host (``float()``) would
    make the host wait for the GPU every step, so callers sum on the device and read once.
    """
    image = batch["image"].to(device, non_blocking=True)
    label = batch["label"].to(device, non_blocking=True).long()
    optimizer.zero_grad(set_to_none=True)
    with amp.autocast():
        logits = model(image)
    loss = loss_fn(logits.float(), label)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


@dataclass
class EpochStats:
    """What one worker saw in one epoch; the report sums these to show where time went."""

    epoch: int
    loss: float
    steps: int
    crops: int
    positive_fraction: float
    step_seconds: float
    wait_seconds: float
    ratio: float
    generation: int
    first_batch_at: float | None = None  # wall clock (time.time()) when the first batch was in hand: time to first step

    @property
    def wait_fraction(self) -> float:
        total = self.step_seconds + self.wait_seconds
        return self.wait_seconds / total if total > 0 else 0.0

    def metrics_row(self, time_s: float, rank: int, param_checksum: float) -> dict[str, Any]:
        """The row a worker reports for this epoch (metrics.jsonl, TensorBoard, the run report).

        Built here, beside the fields, so every reader (``trainer/report.py``) finds the keys it
        plots, ``wait_fraction`` included, instead of guessing at a hand-built dict.
        """
        return {"epoch": self.epoch, "loss": self.loss, "steps": self.steps, "crops": self.crops,
                "positive_fraction": self.positive_fraction, "ratio": self.ratio, "generation": self.generation,
                "step_seconds": self.step_seconds, "wait_seconds": self.wait_seconds,
                "wait_fraction": self.wait_fraction, "time_s": time_s, "rank": rank,
                "param_checksum": param_checksum, "first_batch_at": self.first_batch_at}


def run_epoch(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], loss_fn: torch.nn.Module,
              optimizer: torch.optim.Optimizer, amp: AmpPolicy, scaler: torch.amp.GradScaler,
              device: torch.device, epoch: int, ratio: float, generation: int,
              stager: DeviceStager | None = None) -> EpochStats:
    """Train over ``batches``; time spent inside ``next()`` counts as waiting for data.

    With a ``stager`` the next batch's host-to-device copy is issued before the current step
    runs (pinned buffers, side stream on CUDA). The loss is summed on the device and read once
    at the end, so no step makes the host wait for the GPU.
    """
    model.train()
    loss_sum = torch.zeros((), device=device)
    steps = crops = positives = 0
    wait = compute = 0.0
    first_at: float | None = None
    iterator = iter(batches) if stager is None else prefetch_to_device(batches, stager)
    while True:
        t0 = time.perf_counter()
        batch = next(iterator, None)
        t1 = time.perf_counter()
        if batch is None:
            break
        if first_at is None:
            first_at = time.time()
        loss_sum += train_step(model, batch, loss_fn, optimizer, amp, scaler, device)
        steps += 1
        t2 = time.perf_counter()
        wait += t1 - t0
        compute += t2 - t1
        crops += int(batch["image"].shape[0])
        if "positive" in batch:
            positives += int(batch["positive"].sum())  # a host tensor: no device sync
    mean_loss = float(loss_sum) / steps if steps else float("nan")  # the epoch's one host sync
    return EpochStats(epoch, mean_loss, steps, crops, positives / crops if crops else 0.0, compute, wait, ratio,
                      generation, first_at)
