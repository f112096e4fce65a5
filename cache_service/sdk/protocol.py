"""The whole conversation between one experiment and the shared cache, in the order it happens.

Every consumer -- the project's own Ray Train workers, a user's plain PyTorch loop, a
Lightning module -- follows the same sequence, and this module is the only place that
speaks to the cache actor for an experiment (the typed classes in
:mod:`cache_service.sdk.api` call these functions; nobody else names actor methods):

1. ``attach``       find the cache actor for a fingerprint (any driver, any Ray job)
2. ``register``     announce the experiment; from now on the pool does not rotate away
                    from it before it has trained on the current generation
3. ``epoch_snapshot``  every DDP rank asks for (experiment, epoch) and gets the *same*
                    snapshot: the pool's refs for one generation plus this experiment's
                    current pos/neg ratio
4. ``crop_batches`` each rank takes its shard of the snapshot and cuts pos/neg crops with
                    the ratio (checked against *its own* patch size), then runs the
                    user's random suffix on the crops
5. ``finish_epoch`` exactly one rank (rank 0) says the epoch is done; the cache rotates
                    once every attached experiment is done with the generation
                    (:mod:`common.fair_rotation`), so a faster experiment repeats the pool
6. ``validation_snapshot`` / ``validation_numbers``  validate on the cached validation
                    volumes: Dice, r_FP, r_FN and the next ratio (paper Eq. 4-6)
7. ``publish_ratio`` store the result; the next ``epoch_snapshot`` carries the new ratio
8. ``unregister``   detach; the pool no longer waits for this experiment

Steps 3-7 repeat per epoch. Errors are the project's own (:mod:`common.errors`). ``cache``
is any :class:`~cache_service.handle.CacheCalls`: the typed handle of the actor, or a
:class:`~cache_service.recovery.ResilientCache` that re-attaches after a cache restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from cache_service import client
from cache_service.handle import CacheCalls, CacheHandle
from cache_service.sdk.batches import ConsumerSettings, CropBatches
from cache_service.snapshot import Snapshot
from cache_service.status import ExperimentStatus, SamplerReport
from common.config import SamplerConfig
from common.errors import UnknownItemError
from common.ratio import error_indices, next_ratio
from trainer.device_crops import DeviceVolumes
from trainer.validation import dice_per_class  # the validation actor's Dice, so both report the same


# 1. attach ------------------------------------------------------------------------------------
def attach(fingerprint: str, namespace: str) -> CacheHandle:
    """The live cache actor for ``fingerprint`` (raises CacheUnavailableError if there is none)."""
    return client.attach(fingerprint, namespace)


# 2. register ----------------------------------------------------------------------------------
def register(cache: CacheCalls, experiment_id: str, info: dict[str, Any]) -> None:
    """Attach an experiment (idempotent: registering again keeps its history)."""
    cache.register(experiment_id, info)


# 3. snapshot ----------------------------------------------------------------------------------
def epoch_snapshot(cache: CacheCalls, experiment_id: str, epoch: int) -> Snapshot:
    """The pool for this (experiment, epoch): identical for every rank that asks."""
    return cache.snapshot(experiment_id, epoch=epoch)


# 4. crop --------------------------------------------------------------------------------------
def crop_batches(snapshot: Snapshot, settings: ConsumerSettings, *, epoch: int, rank: int, world_size: int,
                 items: Sequence[Any] | None = None, fetch: Callable[[Any], Any] | None = None,
                 device_volumes: DeviceVolumes | None = None) -> CropBatches:
    """This rank's crop batches for one epoch (``items``/``fetch``: load elsewhere, e.g. the no-cache baseline;
    ``device_volumes``: cut the crops on that device)."""
    return CropBatches(snapshot, settings, epoch=epoch, rank=rank, world_size=world_size, items=items, fetch=fetch,
                       device_volumes=device_volumes)


# 5. report progress ---------------------------------------------------------------------------
def finish_epoch(cache: CacheCalls, experiment_id: str, epoch: int, metrics: dict[str, float] | None = None
                 ) -> bool:
    """Rank 0 only: the epoch is done (the cache may rotate); returns whether the pool rotated."""
    return cache.report_progress(experiment_id, epoch, dict(metrics or {}))


def experiment_status(cache: CacheCalls, experiment_id: str) -> ExperimentStatus:
    """The experiment as the cache sees it (epoch, ratio, cycle coverage)."""
    status = cache.status()
    for exp in status.experiments:
        if exp.experiment_id == experiment_id:
            return exp
    raise UnknownItemError("experiment", experiment_id)


# 6. validate ----------------------------------------------------------------------------------
def validation_snapshot(cache: CacheCalls) -> Snapshot:
    """The cached validation volumes (deterministic prefix only, whole volumes)."""
    return cache.val_snapshot()


@dataclass(frozen=True)
class ValidationNumbers:
    """What one validation round measured, and the ratio it asks for next."""

    dice_per_class: tuple[float, ...]  # foreground classes 1..K-1
    mean_dice: float
    r_fp: float
    r_fn: float
    ratio: float


def validation_numbers(preds: Sequence[Any], labels: Sequence[Any], num_classes: int,
                       sampler: SamplerConfig, current_ratio: float) -> ValidationNumbers:
    """Dice, r_FP, r_FN (means over cases) and the next ratio r' = (r_FN / r_FP) ** gamma, clamped."""
    if len(preds) != len(labels) or not preds:
        raise ValueError(f"need matching, non-empty predictions and labels, got {len(preds)} and {len(labels)}")
    dices, fps, fns = [], [], []
    for pred, label in zip(preds, labels):
        p, t = _class_map(pred), _class_map(label)
        r_fp, r_fn = error_indices(p, t, num_classes, sampler.formula)
        dices.append(dice_per_class(p, t, num_classes))
        fps.append(r_fp)
        fns.append(r_fn)
    per_class = tuple(float(x) for x in np.mean(dices, axis=0))
    r_fp, r_fn = float(np.mean(fps)), float(np.mean(fns))
    ratio = next_ratio(r_fp, r_fn, sampler.gamma, sampler.ratio_bounds) if sampler.adaptive else current_ratio
    return ValidationNumbers(per_class, float(np.mean(per_class)) if per_class else 0.0, r_fp, r_fn, ratio)


def _class_map(x: Any) -> np.ndarray:
    """A class-index map as numpy; a leading singleton channel (1, X, Y, Z) is dropped."""
    arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return arr[0] if arr.ndim == 4 and arr.shape[0] == 1 else arr


# 7. publish the ratio -------------------------------------------------------------------------
def publish_ratio(cache: CacheCalls, experiment_id: str, epoch: int, numbers: ValidationNumbers) -> SamplerReport:
    """Store a validation result; the experiment's next snapshot carries ``numbers.ratio``."""
    return cache.publish_sampler(experiment_id, numbers.ratio, numbers.r_fp, numbers.r_fn,
                                 list(numbers.dice_per_class), numbers.mean_dice, epoch)


def current_ratio(cache: CacheCalls, experiment_id: str) -> float:
    """The pos/neg ratio this experiment's next snapshot carries."""
    return cache.get_ratio(experiment_id)


# 8. unregister --------------------------------------------------------------------------------
def unregister(cache: CacheCalls, experiment_id: str) -> bool:
    """Detach; the pool stops waiting for this experiment. False if it was not attached."""
    return cache.unregister(experiment_id)
