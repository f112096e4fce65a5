"""Rules for the pool, the epoch and validation: sized from the fingerprint's times and bytes.

The pool takes as many prepared volumes as half the smallest node's object store holds; the
replace rate is what the preparation tasks can prepare while one epoch trains, so a rotation's
replacements are ready by the round boundary. Validation runs beside training on its own share,
as often as it keeps up.
"""

from __future__ import annotations

import math

from common.planning.choice import Choice
from common.planning.fingerprint import TIMING_SPACING, DatasetFingerprint
from common.planning.geometry_rules import Grid
from common.planning.machine import Machine
from common.planning.run_rules import (
    CPU_TRAIN_VOXELS_PER_S,
    GPU_TRAIN_VOXELS_PER_S,
    OBJECT_STORE_SHARE,
    TARGET_STEPS,
    Resources,
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


def plan_window(patch: tuple[int, int, int], factor: int, median_shape: tuple[int, int, int],
                batch: int, sw_batch: int) -> list[int]:
    """The sliding window: one forward pass of ``sw_batch`` windows costs about one training step.

    A sliding-window pass computes about the volume's voxels times the overlap whatever the window,
    so a larger window costs no more in all (fewer windows, less overlap at the seams) and gives each
    prediction more context; what bounds it is one pass's time and memory. Inference costs about a
    third of a training step per voxel and keeps no activations for a backward pass, so a window may
    hold ``batch / (INFERENCE_COST * sw_batch)`` times the patch's voxels: 6x (1.8x per axis) on CPU
    with one window per pass, 3x (1.44x per axis) on a GPU that runs ``batch`` windows per pass.
    """
    scale = window_scale(batch, sw_batch)
    return [max(factor, min(int(p * scale), max(p, s)) // factor * factor) for p, s in zip(patch, median_shape)]


def window_scale(batch: int, sw_batch: int) -> float:
    """Per axis, how much larger than the patch a window may be for one pass to cost one training step."""
    return (batch / (INFERENCE_COST * sw_batch)) ** (1 / 3)


def validation_voxels_per_s(res: Resources) -> float:
    """The validation actor's throughput at training cost per voxel: its GPU share, or its cores.

    An actor with a fractional CPU share still runs one thread (Ray sets its thread count to at least
    one), so on CPU it is counted as at least one core.
    """
    planned = {c.key: c.value for c in res.choices}
    if res.use_gpu:
        return GPU_TRAIN_VOXELS_PER_S * float(planned["validation.num_gpus"])
    return CPU_TRAIN_VOXELS_PER_S * max(1.0, float(planned["validation.num_cpus"]))


def plan_validation(fp: DatasetFingerprint, grid: Grid, patch: tuple[int, int, int], factor: int,
                    res: Resources, epoch_s: float, batch: int) -> list[Choice]:
    """Window (:func:`plan_window`), overlap, interval, and connected components.

    The validation actor runs beside training on its own CPU (and GPU) share, so a validation takes
    nothing from the ranks; the interval is therefore the fewest epochs in which the actor finishes
    one validation (it keeps up, and the sampler's ratio is updated as often as it can be), not a
    share of the training time.
    """
    sw_batch = batch if res.use_gpu else 1
    roi = plan_window(patch, factor, grid.median_shape, batch, sw_batch)
    overlap = 0.5 if res.use_gpu else 0.25
    n_val = max(1, len(fp.cases) - fp.num_train)
    windows = math.prod(math.ceil(s / (r * (1 - overlap))) for s, r in zip(grid.median_shape, roi))
    val_s = n_val * windows * math.prod(roi) * INFERENCE_COST / validation_voxels_per_s(res)
    interval = max(1, min(10, math.ceil(val_s / max(1e-3, epoch_s))))
    fractions = fp.mean_class_fractions()[1:]
    organ = len(fractions) == 1 and fractions[0] > 0.01
    return [
        Choice("validation.roi_size", roi, f"one pass of {sw_batch} window(s) costs about one training step: "
                                           f"{window_scale(batch, sw_batch):.2f}x the patch per axis, within the median volume "
                                           f"{list(grid.median_shape)}"),
        Choice("validation.overlap", overlap, "GPU: MONAI's 0.5" if res.use_gpu else "CPU: 0.25 halves the windows"),
        Choice("validation.interval", interval, f"~{val_s:.0f} s per validation of {n_val} case(s) on the validation "
                                                f"actor's own share, beside ~{epoch_s:.0f} s epochs: as often as it "
                                                "keeps up"),
        Choice("validation.keep_largest_component", organ,
               f"one foreground class of {fractions[0]:.1%} of the volume: one organ" if organ
               else "small or several structures: keep every component"),
        Choice("validation.sw_batch_size", sw_batch, "windows per forward pass"),
    ]
