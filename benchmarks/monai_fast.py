"""MONAI's own fast-training recipe as a time-to-Dice arm, in one process, as its tutorial runs it.

What MONAI's ``acceleration/fast_training_tutorial`` configures: the deterministic prefix
(here the project's own chain, so every arm sees the same voxels) followed by
``FgBgToIndicesd`` inside a ``CacheDataset`` (``cache_rate=1.0``, ``copy_cache=False``),
``RandCropByPosNegLabeld`` (pos=1, neg=1) reading the cached fg/bg indices, meta tracking
off (``set_track_meta(False)``), ``ThreadDataLoader(num_workers=0)``, ``DiceCELoss`` and
``Novograd`` at ten times the Adam learning rate, and AMP. Each step is the project's own
:func:`trainer.steps.train_step` (forward pass under the config's AMP policy, on the CPU bf16
with ``training.cpu_bf16``; loss in fp32), as in the other arms. Validation runs inline between epochs
(as in the tutorial) with the project's own sliding-window validator, so Dice is computed
the same way as for the other arms.
"""

from __future__ import annotations

import math
import time

import torch
from monai.data import CacheDataset, ThreadDataLoader, set_track_meta
from monai.optimizers import Novograd
from monai.transforms import (
    Compose,
    EnsureTyped,
    FgBgToIndicesd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandShiftIntensityd,
)

from arm_result import ArmResult
from common.catalog import Catalog
from common.config import ExperimentConfig
from common.preprocess import Preprocessor
from trainer.model import AmpPolicy, build_loss, build_model
from trainer.steps import train_step
from trainer.validation import Validator

__all__ = ["fast_transforms", "run_monai_fast"]

CPU = torch.device("cpu")  # the arm runs on the CPU

#: the tutorial: "Novograd paper suggests to use a bigger LR than Adam"
NOVOGRAD_LR_FACTOR = 10.0


def fast_transforms(cfg: ExperimentConfig, prep: Preprocessor) -> Compose:
    """The project's deterministic chain + cached fg/bg indices, then MONAI's random crop and augmentation."""
    aug = cfg.augmentation
    return Compose([
        *prep.chain.transforms,
        FgBgToIndicesd(keys="label", fg_postfix="_fg", bg_postfix="_bg", image_key="image"),
        EnsureTyped(keys=["image", "label"], track_meta=False),
        RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=cfg.sampler.patch_size,
                               pos=1, neg=1, num_samples=cfg.sampler.samples_per_volume,
                               fg_indices_key="label_fg", bg_indices_key="label_bg"),
        *[RandFlipd(keys=["image", "label"], prob=aug.flip_prob, spatial_axis=a) for a in range(3)],
        RandShiftIntensityd(keys="image", offsets=aug.shift_offset, prob=aug.shift_prob),
    ])


def run_monai_fast(cfg: ExperimentConfig, catalog: Catalog, prep: Preprocessor, time_limit: float,
                   fill_workers: int = 2) -> ArmResult:
    """Train until ``cfg.training.target_dice`` or ``time_limit`` seconds (counting the cache fill)."""
    t_start = time.time()
    torch.manual_seed(cfg.training.seed)
    files = [{"image": r.image, "label": r.label} for r in catalog.train]
    transform = fast_transforms(cfg, prep)
    transform.set_random_state(seed=cfg.training.seed)
    ds = CacheDataset(files, transform=transform, cache_rate=1.0, num_workers=fill_workers,
                      copy_cache=False, progress=True)
    val_volumes = [prep(r) for r in catalog.val]  # cached whole, as the tutorial does (needs meta: before below)
    set_track_meta(False)  # process-wide, once everything is cached: no MetaTensor bookkeeping per crop
    try:
        return _train(cfg, catalog, ds, val_volumes, t_start, time_limit)
    finally:
        set_track_meta(True)


def _train(cfg: ExperimentConfig, catalog: Catalog, ds: CacheDataset, val_volumes: list, t_start: float,
           time_limit: float) -> ArmResult:
    """The tutorial's loop: epochs over the ThreadDataLoader, validation inline every ``interval`` epochs."""
    fill_s = time.time() - t_start
    # each item gives samples_per_volume crops; volumes per step chosen so a step sees batch_size crops
    volumes_per_step = max(1, cfg.training.batch_size // cfg.sampler.samples_per_volume)
    loader = ThreadDataLoader(ds, num_workers=0, batch_size=volumes_per_step, shuffle=True)
    in_channels = 1
    model = build_model(cfg.training, in_channels, catalog.num_classes)
    optimizer = Novograd(model.parameters(), lr=cfg.training.lr * NOVOGRAD_LR_FACTOR)
    loss_fn = build_loss("dice_ce")
    validator = Validator(cfg, catalog.num_classes, in_channels)
    amp = AmpPolicy.for_device(CPU, cfg.training)
    scaler = amp.scaler()
    epochs = steps = 0
    wait_s = step_s = validation_s = best = 0.0
    best_per_class: tuple[float, ...] = ()
    time_to_target, steps_to_target = None, None
    history: list[tuple[float, float]] = []
    steps_per_epoch = cfg.training.steps_per_epoch or math.ceil(len(ds) / volumes_per_step)
    while time.time() - t_start < time_limit and time_to_target is None:
        model.train()
        it, done = iter(loader), 0
        while done < steps_per_epoch:
            t0 = time.perf_counter()
            batch = next(it, None)
            if batch is None:  # one pass of the loader ended before the epoch's steps: start another
                it = iter(loader)
                continue
            t1 = time.perf_counter()
            train_step(model, batch, loss_fn, optimizer, amp, scaler, CPU)
            wait_s += t1 - t0
            step_s += time.perf_counter() - t1
            done += 1
        epochs, steps = epochs + 1, steps + done
        if epochs % cfg.validation.interval == 0:
            result = validator.validate(epochs - 1, model.state_dict(), val_volumes)
            validation_s += result.seconds
            history.append((time.time() - t_start, result.mean_dice))
            if result.mean_dice > best:
                best, best_per_class = result.mean_dice, tuple(result.dice_per_class)
            if result.mean_dice >= cfg.training.target_dice:
                time_to_target, steps_to_target = time.time() - t_start, steps
    return ArmResult("monai-fast", time_to_target is not None, time_to_target, steps_to_target, best, best_per_class,
                     epochs, steps, time.time() - t_start, fill_s,
                     wait_s / (wait_s + step_s) if wait_s + step_s > 0 else 0.0, step_s / max(1, steps), validation_s,
                     history=tuple(history))
