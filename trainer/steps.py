"""One optimisation step and one epoch over a batch stream, free of Ray.

The worker loop (``trainer/worker.py``) only decides *which* batches and *when* to
validate; the arithmetic lives here so it reads like a plain PyTorch loop and can be
unit-tested on CPU in seconds.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import torch

from trainer.model import AmpPolicy


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, numpy and torch; with ``deterministic`` also pin torch's algorithms."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def train_step(model: torch.nn.Module, batch: Mapping[str, torch.Tensor], loss_fn: torch.nn.Module,
               optimizer: torch.optim.Optimizer, amp: AmpPolicy, scaler: torch.amp.GradScaler,
               device: torch.device) -> float:
    """Forward under autocast, Dice loss, scaled backward, optimiser step; returns the loss."""
    image = batch["image"].to(device, non_blocking=True)
    label = batch["label"].to(device, non_blocking=True).long()
    optimizer.zero_grad(set_to_none=True)
    with amp.autocast():
        logits = model(image)
    loss = loss_fn(logits.float(), label)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach())


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

    @property
    def wait_fraction(self) -> float:
        total = self.step_seconds + self.wait_seconds
        return self.wait_seconds / total if total > 0 else 0.0


def run_epoch(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], loss_fn: torch.nn.Module,
              optimizer: torch.optim.Optimizer, amp: AmpPolicy, scaler: torch.amp.GradScaler,
              device: torch.device, epoch: int, ratio: float, generation: int) -> EpochStats:
    """Train over ``batches``; time spent inside ``next()`` counts as waiting for data."""
    model.train()
    losses: list[float] = []
    crops = positives = 0
    wait = compute = 0.0
    iterator = iter(batches)
    while True:
        t0 = time.perf_counter()
        batch = next(iterator, None)
        t1 = time.perf_counter()
        if batch is None:
            break
        losses.append(train_step(model, batch, loss_fn, optimizer, amp, scaler, device))
        t2 = time.perf_counter()
        wait += t1 - t0
        compute += t2 - t1
        crops += int(batch["image"].shape[0])
        if "positive" in batch:
            positives += int(torch.as_tensor(batch["positive"]).sum())
    return EpochStats(epoch, float(np.mean(losses)) if losses else float("nan"), len(losses), crops,
                      positives / crops if crops else 0.0, compute, wait, ratio, generation)
