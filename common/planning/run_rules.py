"""Rules for intensities, augmentation, resources, the pool and validation.

Each rule reads the fingerprint and the machine and returns :class:`Choice` values. The
pool rules are the cache's own knowledge: the bytes of one prepared volume, the object store
of the smallest node, and how long one case takes to prepare against how long an epoch lasts,
so that rotation keeps up with training instead of stalling it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from common.cpu_budget import CpuBudget, task_share
from common.planning.choice import Choice
from common.planning.fingerprint import DatasetFingerprint
from common.planning.machine import Machine
from common.volume import INDEX_BYTE_SHARE

#: estimated training throughput (batch x patch voxels per second): per CPU core, and per GPU under AMP
CPU_TRAIN_VOXELS_PER_S = 350_000
GPU_TRAIN_VOXELS_PER_S = 16_000_000
#: share of the smallest node's object store the pool may take (the rest: batches, weights, other jobs)
OBJECT_STORE_SHARE = 0.5
#: total optimiser steps the planned epochs aim for (nnU-Net trains 250 000; CPU runs stop on time)
TARGET_STEPS = {"cpu": 6000, "gpu": 25000}
#: MRI cases whose 99th percentiles differ more than this (different scanners) are clipped and augmented
MRI_SPREAD = 1.3
#: below this many training cases the plan takes Adam rather than NovoGrad (see :func:`plan_optimizer`)
FEW_CASES_FOR_NOVOGRAD = 4


@dataclass(frozen=True)
class Resources:
    """Who runs where: decided first, since the patch and pool rules size by it."""

    use_gpu: bool
    num_workers: int
    worker_cpus: float
    choices: tuple[Choice, ...]


def plan_cpu_bf16(machine: Machine) -> tuple[Choice, ...]:
    """bf16 autocast on CPU trainers and validation where every node's CPU has bf16 instructions: there a
    step took 1.3x and a validation 1.5x less time on the CT profile; elsewhere about ten times more."""
    if machine.has_gpu:
        return ()  # GPUs train with fp16 + GradScaler; the CPU setting does not apply
    if machine.cpu_bf16 is None:
        return (Choice("training.cpu_bf16", False, "whether the CPUs compute bf16 natively is not known "
                                                   "(a described machine, or no /proc/cpuinfo): fp32"),)
    if machine.cpu_bf16:
        return (Choice("training.cpu_bf16", True, "the CPUs have bf16 instructions: bf16 autocast made a step "
                                                  "1.3x and a validation 1.5x faster on the CT profile"),)
    return (Choice("training.cpu_bf16", False, "no bf16 instructions on the CPUs: autocast would be about "
                                               "ten times slower than fp32"),)


def plan_resources(machine: Machine, num_train: int) -> Resources:
    """DDP workers and the shares of CPUs and GPUs for training, validation and cache tasks."""
    cpus = machine.total_cpus
    if machine.has_gpu:
        g = machine.total_gpus
        per_node = min(n.cpus / max(1, n.gpus) for n in machine.nodes if n.gpus)
        worker_cpus = float(max(1, min(8, int(per_node - 1.5))))
        share = 0.5 if g == 1 else 0.75
        val_cpus = 1.0 if cpus - g * worker_cpus >= 2 else 0.5  # and room left for the cache's tasks
        device = "cuda" if num_train >= 10 else "cpu"
        choices = (
            Choice("training.use_gpu", True, f"{g} GPU(s) found"),
            Choice("training.num_workers", g, "one DDP rank per GPU (nccl)"),
            Choice("training.worker_num_gpus", share, f"{share:g} GPU per rank leaves {1 - share:g} of a GPU to the "
                                                      "validation actor, so validation never waits for a free GPU"),
            Choice("training.worker_num_cpus", worker_cpus, f"{per_node:g} CPUs per GPU on a node, 1.5 left to "
                                                            "validation, the cache actor and its tasks"),
            Choice("validation.num_gpus", 1 - share, "the GPU share the ranks leave free"),
            Choice("validation.num_cpus", val_cpus, "one core beside the GPU" if val_cpus == 1.0 else
                   "half a core: the ranks leave one, which the cache actor and its tasks share with validation"),
            Choice("sampler.device", device, "crops cut on the GPU from volumes uploaded once per generation"
                   if device == "cuda" else f"only {num_train} training cases: the host path keeps affine "
                                            "augmentation, which the GPU crop path lacks"),
            Choice("cache.replace_workers", min(4, max(1, int(cpus * 0.1))), "10 % of the CPUs, at most 4"),
            _task_share(machine, g * worker_cpus, val_cpus, cap=1.0))
        return Resources(True, g, worker_cpus, choices)
    reserve = max(1.0, cpus * 0.25)
    workers = max(1, min(8, int((cpus - reserve) // 4)))
    worker_cpus = max(1.0, float(math.floor((cpus - reserve) / workers)))
    small = cpus <= 4
    val_cpus = 0.5 if small else 1.0
    choices = (
        Choice("training.use_gpu", False, "no GPU in the cluster"),
        Choice("training.num_workers", workers, f"{cpus:g} CPUs less {reserve:g} for the cache and validation, "
                                                "at least 4 cores per DDP rank (gloo)"),
        Choice("training.worker_num_cpus", worker_cpus, "the training cores split evenly over the ranks"),
        Choice("validation.num_cpus", val_cpus, "what the ranks leave"),
        Choice("sampler.device", "cpu", "no GPU: crops are cut by the host producer thread"),
        Choice("cache.replace_workers", 1 if small else 2, f"{cpus:g} CPUs: {'one' if small else 'two'} "
                                                           "preparation task(s) at a time beside training"),
        _task_share(machine, workers * worker_cpus, val_cpus, cap=0.5 if small else 1.0))
    return Resources(False, workers, worker_cpus, choices)


def _task_share(machine: Machine, trainers: float, validation: float, cap: float) -> Choice:
    """The preparation tasks' share of a CPU: what the ranks, validation and the cache actor leave (the
    launcher's own budget, :mod:`common.cpu_budget`), split over the fill's tasks (one per core of the
    smallest node), so that the trainers start while the pool fills and a replacement always fits beside them."""
    fill = max(1, int(min(n.cpus for n in machine.nodes)))
    left = CpuBudget(machine.total_cpus, trainers, validation, task=cap, fill_tasks=fill).left_for_tasks
    return Choice("cache.task_num_cpus", min(cap, task_share(left, fill)),
                  f"the {left:g} CPUs the ranks, validation and the cache actor leave, over the fill's {fill} tasks: "
                  "the trainers start while the pool fills and a replacement always fits beside them")


def plan_optimizer(num_train: int) -> Choice:
    """NovoGrad (the paper's optimiser) unless the training set is a handful of cases.

    Measured (docs/benchmarks.md): on the demo phantoms (10 cases) NovoGrad at its default
    lr 1e-2 reached mean Dice 0.8 as early as Adam and held it; on BrainDev (one training case) it
    peaked at 0.75 and fell back to 0.61-0.73 while the same plan with Adam at 1e-3 reached 0.91.
    With so few cases every batch comes from the same volume, and NovoGrad's layer-normalised step at
    1e-2 keeps its size as the loss flattens, so it oscillates around the fit. The lr is left to the
    optimiser's default (``common.config.training.DEFAULT_LR``).
    """
    if num_train < FEW_CASES_FOR_NOVOGRAD:
        return Choice("training.optimizer", "adam",
                      f"only {num_train} training case(s): NovoGrad at 1e-2 oscillated on one case (BrainDev), "
                      "Adam at its default lr 1e-3 converged")
    return Choice("training.optimizer", "novograd", f"{num_train} training cases: the paper's optimiser at its "
                                                    "default lr 1e-2")


def plan_intensity(fp: DatasetFingerprint) -> list[Choice]:
    """CT: clip to foreground percentiles 0.5-99.5 and scale (nnU-Net); MRI: z-score over non-zero voxels."""
    if fp.is_ct:
        return [Choice("preprocessing.normalization", "ct", "dataset.json modality CT"),
                Choice("preprocessing.ct_percentiles", [0.5, 99.5],
                       f"foreground 0.5-99.5th percentiles (nnU-Net), median over cases "
                       f"[{fp.fg_percentile(0.5):.0f}, {fp.fg_percentile(99.5):.0f}] HU")]
    spread, outliers = fp.nonzero_p99_spread(), fp.outlier_ratio()
    clip = spread > MRI_SPREAD or outliers > 2.0
    why = (f"non-zero 99th percentiles differ {spread:.2f}x between cases, the brightest voxel is {outliers:.1f}x "
           f"the 99th percentile")
    return [Choice("preprocessing.normalization", "mri", f"dataset.json modality {fp.modality}: z-score over "
                                                         "non-zero voxels per volume"),
            Choice("preprocessing.clip_percentiles", [1.0, 99.0] if clip else None,
                   f"{why}: clip to 1-99 first" if clip else f"{why}: no clipping needed")]


def plan_augmentation(fp: DatasetFingerprint, device: str) -> list[Choice]:
    """Flip and shift always (the paper); contrast/scale when intensities vary; affine for few cases on the host."""
    varied = not fp.is_ct and fp.nonzero_p99_spread() > MRI_SPREAD
    few = fp.num_train < 20
    return [
        Choice("augmentation.flip_prob", 0.5, "the paper's random flip"),
        Choice("augmentation.shift_prob", 0.5, "the paper's random intensity shift"),
        Choice("augmentation.contrast_prob", 0.5 if varied else 0.0,
               "intensities differ between cases (scanners)" if varied else "intensities consistent across cases"),
        Choice("augmentation.scale_prob", 0.5 if varied else 0.0, "as contrast"),
        Choice("augmentation.affine_prob", 0.3 if few and device == "cpu" else 0.0,
               f"{fp.num_train} training cases: small rotations and scaling add variety" if few and device == "cpu"
               else "the GPU crop path does not warp" if device == "cuda" else "enough cases without warping"),
    ]


def volume_bytes(median_shape: tuple[int, int, int], channels: int) -> int:
    """Bytes of one prepared volume in the object store: float32 image, uint8 label, capped indices."""
    voxels = math.prod(median_shape)
    image = voxels * 4 * channels
    return int(image * (1 + INDEX_BYTE_SHARE) + voxels)


def step_seconds(patch: tuple[int, int, int], batch: int, res: Resources) -> float:
    """Estimated seconds of one training step (batch x patch voxels at the node's throughput)."""
    voxels = math.prod(patch) * batch
    rate = GPU_TRAIN_VOXELS_PER_S if res.use_gpu else CPU_TRAIN_VOXELS_PER_S * res.worker_cpus
    return voxels / rate
