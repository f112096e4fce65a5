"""Rules for the grid and the network: target spacing, patch size, U-Net depth, batch size.

nnU-Net's experiment planner is the model: the median spacing (the low-resolution axis of
strongly anisotropic data from its 10th percentile), a patch as large as the resampled median
image within a memory budget, shrinking the axis that is largest relative to the image first,
and as many down-samplings as keep the coarsest feature map at 4 voxels or more. On a node
without a GPU the budget is CPU time instead of GPU memory: the volume and the patch are sized so
that a step and a preparation stay in seconds on the cores the run has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common.planning.choice import Choice
from common.planning.fingerprint import DatasetFingerprint
from common.planning.machine import Machine

#: spacing ratio above which a dataset is "anisotropic" (nnU-Net's threshold)
ANISOTROPY_RATIO = 3.0
#: voxels of one resampled volume on a node without GPU, per CPU core (prep, validation and memory stay small)
CPU_VOLUME_VOXELS_PER_CORE = 1_500_000
#: a CPU training step's voxels (batch x patch) per training core: keeps a step near a second
CPU_STEP_VOXELS_PER_CORE = 2 * 64**3
#: estimated GPU training memory per patch voxel and sample for a U-Net of 32 base channels under AMP
#: (nnU-Net's 128^3 x batch 2 patch needs about 10 GB)
GPU_BYTES_PER_VOXEL_32 = 2400
#: share of a GPU's memory the planner lets training use (the rest: CUDA context, crop path, validation)
GPU_MEMORY_SHARE = 0.6
MIN_PATCH = 16
MAX_DEPTH = 5
MAX_CHANNELS = 320


@dataclass(frozen=True)
class Grid:
    """The planned target spacing and the median volume shape it gives."""

    spacing: tuple[float, float, float]
    median_shape: tuple[int, int, int]
    smallest_shape: tuple[int, int, int]  # per axis, the smallest case: a patch beyond it quarantines that case


def _shape_at(extent_mm: tuple[float, ...], spacing: tuple[float, ...]) -> tuple[int, int, int]:
    return tuple(max(1, int(round(e / s))) for e, s in zip(extent_mm, spacing))  # type: ignore[return-value]


def _base_spacing(fp: DatasetFingerprint) -> tuple[list[float], str]:
    median = list(fp.median_spacing())
    ratio = max(median) / min(median)
    if ratio <= ANISOTROPY_RATIO:
        return median, f"median spacing {_mm(median)}"
    axis = int(np.argmax(median))
    median[axis] = max(fp.spacing_percentile(axis, 10), max(m for i, m in enumerate(median) if i != axis))
    return median, (f"anisotropic (slice spacing {ratio:.1f}x in-plane > {ANISOTROPY_RATIO:g}): in-plane median, "
                    f"axis {axis} from the 10th percentile of its spacings, as nnU-Net")


def _mm(values: list[float] | tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "] mm"


def plan_grid(fp: DatasetFingerprint, machine: Machine) -> tuple[Grid, Choice]:
    """Target spacing: the median (nnU-Net's anisotropic rule), coarsened on CPU to a voxel budget."""
    spacing, why = _base_spacing(fp)
    extent = fp.median_extent_mm()
    if not machine.has_gpu:
        budget = CPU_VOLUME_VOXELS_PER_CORE * max(2.0, machine.total_cpus)
        voxels = math.prod(_shape_at(extent, spacing))
        if voxels > budget:
            # coarsen the finer axes first (towards the coarsest), then all axes alike
            coarse = max(spacing)
            fine_voxels = voxels * math.prod(s / coarse for s in spacing)
            if fine_voxels <= budget:
                scale = (voxels / budget) ** (1 / sum(1 for s in spacing if s < coarse))
                spacing = [min(coarse, s * scale) if s < coarse else s for s in spacing]
            else:
                scale = (fine_voxels / budget) ** (1 / 3)
                spacing = [coarse * scale] * 3
            spacing = [math.ceil(s * 10) / 10 for s in spacing]
            per_core = CPU_VOLUME_VOXELS_PER_CORE / 1e6
            why += (f"; coarsened to fit {budget / 1e6:.1f} M voxels per volume ({per_core:.1f} M "
                    f"per CPU core, no GPU): at the median it would be {voxels / 1e6:.1f} M")
    spacing_t = tuple(round(s, 3) for s in spacing)
    smallest = tuple(min(_shape_at(c.extent_mm, spacing_t)[a] for c in fp.cases) for a in range(3))
    grid = Grid(spacing_t, _shape_at(extent, spacing_t), smallest)  # type: ignore[arg-type]
    return grid, Choice("preprocessing.spacing", list(spacing_t),
                        f"{why}; median volume {list(grid.median_shape)} voxels")


def patch_voxel_budget(machine: Machine, worker_cpus: float, base_channels: int, batch: int) -> tuple[int, str]:
    """Voxels one patch may have: GPU memory on a GPU, step time on CPU."""
    if machine.has_gpu:
        per_voxel = GPU_BYTES_PER_VOXEL_32 * base_channels / 32 * batch
        budget = int(machine.gpu_memory_bytes * GPU_MEMORY_SHARE / per_voxel)
        return budget, (f"{GPU_MEMORY_SHARE:.0%} of {machine.gpu_memory_bytes / 2**30:.0f} GiB GPU memory at "
                        f"~{GPU_BYTES_PER_VOXEL_32 * base_channels / 32:.0f} B per voxel and sample (AMP)")
    budget = int(CPU_STEP_VOXELS_PER_CORE * worker_cpus / batch)
    return budget, f"CPU step budget {CPU_STEP_VOXELS_PER_CORE / 1e6:.2f} M voxels per core x {worker_cpus:g} cores"


def shrink_to_budget(shape: tuple[int, int, int], budget: int) -> list[int]:
    """Shrink the axis largest relative to the image until the patch fits (nnU-Net), not below MIN_PATCH."""
    patch, floor = list(shape), [min(MIN_PATCH, s) for s in shape]
    while math.prod(patch) > budget and any(p > f for p, f in zip(patch, floor)):
        axis = max((a for a in range(3) if patch[a] > floor[a]), key=lambda a: (patch[a] / shape[a], patch[a]))
        patch[axis] = max(floor[axis], int(patch[axis] * 0.9))
    return patch


def fill_budget(patch: list[int], upper: tuple[int, int, int], factor: int, budget: int) -> tuple[int, int, int]:
    """Round the patch down to multiples of ``factor``, then grow it back one step at a time within the budget.

    Rounding every axis down alone wastes up to a fifth of the budget (BrainDev on 2 cores: 56x72x56,
    86 % of it); the axis smallest relative to the image grows first, as far as the image allows.
    """
    out = [max(factor, p // factor * factor) for p in patch]
    while True:
        room = [a for a in range(3) if out[a] + factor <= max(factor, upper[a])
                and math.prod(out) // out[a] * (out[a] + factor) <= budget]
        if not room:
            return tuple(out)  # type: ignore[return-value]
        axis = min(room, key=lambda a: (out[a] / upper[a], a))
        out[axis] += factor


def plan_patch_and_depth(grid: Grid, fp: DatasetFingerprint, budget: int, budget_why: str
                         ) -> tuple[tuple[int, int, int], int, Choice]:
    """Patch size within the budget, and the depth it allows; the patch is a multiple of 2**depth."""
    unbounded = shrink_to_budget(grid.median_shape, budget)
    capped = [a for a in range(3) if grid.smallest_shape[a] < unbounded[a]]
    upper = tuple(min(m, s) for m, s in zip(grid.median_shape, grid.smallest_shape))
    patch = shrink_to_budget(upper, budget)  # type: ignore[arg-type]
    depth = max(2, min(MAX_DEPTH, int(math.log2(max(1, min(patch)) / 4))))
    factor = 2**depth
    final = fill_budget(patch, upper, factor, budget)  # type: ignore[arg-type]
    fg_vox = _shape_at(fp.median_fg_extent_mm(), grid.spacing)
    cover = [min(1.0, p / f) for p, f in zip(final, fg_vox) if f > 0]
    cap = f", capped on axes {capped} by the smallest case {list(grid.smallest_shape)}" if capped else ""
    reason = (f"median volume {list(grid.median_shape)}{cap}, shrunk to {budget / 1e6:.2f} M voxels ({budget_why}), "
              f"multiples of {factor}; covers {min(cover, default=1.0):.0%} of the median foreground extent "
              f"{list(fg_vox)} on its tightest axis")
    return final, depth, Choice("sampler.patch_size", list(final), reason)  # type: ignore[return-value]


def plan_network(depth: int, base: int, patch: tuple[int, int, int], machine: Machine) -> list[Choice]:
    """U-Net levels to match the patch: ``depth`` down-samplings, channels doubling from ``base``."""
    channels = [min(MAX_CHANNELS, base * 2**i) for i in range(depth + 1)]
    where = "a GPU" if machine.has_gpu else "CPU (no GPU: half nnU-Net's 32 to keep steps short)"
    return [
        Choice("training.channels", channels, f"{base} base channels for {where}, doubling per level up to "
                                              f"{MAX_CHANNELS}"),
        Choice("training.strides", [2] * depth, f"{depth} down-samplings keep the coarsest map of the "
                                                f"{min(patch)}-voxel axis at >= 4 voxels (nnU-Net)"),
        Choice("training.num_res_units", 2, "MONAI UNet's residual units per level; instance norm throughout"),
    ]


def plan_batch(patch: tuple[int, int, int], budget_at_2: int, machine: Machine) -> Choice:
    """Batch 2 (nnU-Net); on a GPU more when the patch hit the image size before the memory budget."""
    if not machine.has_gpu:
        return Choice("training.batch_size", 2, "2 crops per step (nnU-Net); the CPU step budget went into the patch")
    room = int(budget_at_2 * 2 / math.prod(patch))
    batch = max(2, min(8, room))
    return Choice("training.batch_size", batch, f"GPU memory holds {room} patches of {list(patch)}; "
                                                f"{batch} (between nnU-Net's 2 and 8)")
