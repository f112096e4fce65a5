"""Rules for the pool, the epoch and validation: sized from the fingerprint's times and bytes.

The pool takes as many prepared volumes as half the smallest node's object store holds; the
replace rate is what the preparation tasks can prepare while one epoch trains, so a rotation's
replacements are ready by the round boundary. Validation runs every few epochs so that its
sliding windows cost at most a fifth of the training time.
"""

from __future__ import annotations

import math

from common.planning.choice import Choice
from common.planning.fingerprint import TIMING_SPACING, DatasetFingerprint
from common.planning.geometry_rules import Grid
from common.planning.machine import Machine
from common.planning.run_rules import (
    OBJECT_STORE_SHARE,
    TARGET_STEPS,
    VALIDATION_SHARE,
    Resources,
    step_seconds,
    volume_bytes,
)

#: sliding-window inference costs about a third of a training step per voxel (no backward pass)
INFERENCE_COST = 1 / 3


def samples_per_volume(num_train: int) -> Choice:
    few = num_train < 8
    return Choice("sampler.samples_per_volume", 8 if few else 4,
                  f"{num_train} training cases: {'more' if few else 'the usual 4'} crops from each volume per pass")


def prep_seconds_at(fp: DatasetFingerprint, grid: Grid) -> float:
    """One case's preparation at the planned spacing, scaled from its measured time at 1 mm by voxels."""
    at_1mm = math.prod(TIMING_SPACING) / math.prod(grid.spacing)
    return fp.prep_seconds() * max(0.2, min(1.0, at_1mm))


def plan_pool(fp: DatasetFingerprint, grid: Grid, machine: Machine, epoch_s: float,
              replace_workers: int) -> list[Choice]:
    """``cache_num`` from bytes per volume and the object store; ``replace_rate`` from prep vs epoch time."""
    per_volume = volume_bytes(grid.median_shape, fp.channels)
    budget = int(machine.object_store_bytes * OBJECT_STORE_SHARE)
    fits = max(1, budget // max(1, per_volume))
    budget_choice = Choice("cache.byte_budget", f"{budget // 2**20}MiB",
                           f"{OBJECT_STORE_SHARE:.0%} of the smallest node's object store "
                           f"({machine.object_store_bytes / 2**30:.1f} GiB)")
    if fits >= fp.num_train:
        return [budget_choice,
                Choice("cache.cache_num", None, f"all {fp.num_train} training volumes fit "
                                                f"({per_volume / 2**20:.0f} MiB each, {fits} fit): no rotation"),
                Choice("cache.replace_rate", 0.2, "unused while the pool holds every case")]
    prep_s = prep_seconds_at(fp, grid)
    per_epoch = max(1, int(epoch_s * replace_workers / max(prep_s, 1e-3)))
    rate = min(0.5, max(1 / fits, per_epoch / fits))
    return [budget_choice,
            Choice("cache.cache_num", int(fits), f"{per_volume / 2**20:.0f} MiB per volume: {fits} of "
                                                 f"{fp.num_train} fit the budget; the pool rotates"),
            Choice("cache.replace_rate", round(rate, 3),
                   f"{replace_workers} task(s) prepare ~{per_epoch} volumes ({prep_s:.1f} s each) in one epoch "
                   f"(~{epoch_s:.0f} s): rotation keeps up; at most half the pool per round")]


def plan_epochs(steps_per_epoch: int, res: Resources) -> list[Choice]:
    kind = "gpu" if res.use_gpu else "cpu"
    epochs = max(50, min(1000, math.ceil(TARGET_STEPS[kind] / max(1, steps_per_epoch))))
    return [Choice("training.epochs", epochs, f"~{TARGET_STEPS[kind]} steps at {steps_per_epoch} per epoch; "
                                              "set training.time_limit_s to stop sooner"),
            Choice("training.checkpoint_every", max(1, epochs // 20), "20 checkpoints over the run")]


def plan_validation(fp: DatasetFingerprint, grid: Grid, patch: tuple[int, int, int], factor: int,
                    res: Resources, epoch_s: float, batch: int) -> list[Choice]:
    """Window 1.5x the patch (within the volume), overlap, interval, and connected components."""
    roi = [max(factor, min(int(p * 1.5), max(p, s)) // factor * factor) for p, s in zip(patch, grid.median_shape)]
    overlap = 0.5 if res.use_gpu else 0.25
    n_val = max(1, len(fp.cases) - fp.num_train)
    windows = math.prod(math.ceil(s / (r * (1 - overlap))) for s, r in zip(grid.median_shape, roi))
    val_s = n_val * windows * step_seconds(tuple(roi), 1, res) * INFERENCE_COST  # type: ignore[arg-type]
    interval = max(1, min(10, math.ceil(val_s / max(1e-3, VALIDATION_SHARE * epoch_s))))
    fractions = fp.mean_class_fractions()[1:]
    organ = len(fractions) == 1 and fractions[0] > 0.01
    return [
        Choice("validation.roi_size", roi, f"1.5x the patch, within the median volume {list(grid.median_shape)}"),
        Choice("validation.overlap", overlap, "GPU: MONAI's 0.5" if res.use_gpu else "CPU: 0.25 halves the windows"),
        Choice("validation.interval", interval, f"~{val_s:.0f} s per validation of {n_val} case(s) against "
                                                f"~{epoch_s:.0f} s epochs: at most {VALIDATION_SHARE:.0%} of the time"),
        Choice("validation.keep_largest_component", organ,
               f"one foreground class of {fractions[0]:.1%} of the volume: one organ" if organ
               else "small or several structures: keep every component"),
        Choice("validation.sw_batch_size", batch if res.use_gpu else 1, "windows per forward pass"),
    ]
