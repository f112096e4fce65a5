"""The whole conversation between one experiment and the shared cache, in the order it happens.

Every consumer -- the project's own Ray Train workers, a user's plain PyTorch loop, a
Lightning module -- follows the same sequence, and this module is the only place that
speaks to the cache actor for an experiment (the typed classes in
:mod:`cache_service.sdk.api` and :mod:`cache_service.sdk.experiment` call these functions; nobody else names actor methods):

1. ``attach``       find the cache actor for a fingerprint (any driver, any Ray job)
2. ``register``     announce the experiment; from now on the pool does not rotate away
                    from it before it has trained on the current generation
   ``heartbeat``    the opening process renews its lease every few seconds from a thread
                    (:mod:`cache_service.sdk.lease`); when it dies the cache detaches it
3. ``wait_warm``    the first snapshot in a process waits for the pool's first fill
   ``epoch_snapshot``  every DDP rank asks for (experiment, epoch) and gets the *same*
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

from typing import Any, Callable, Sequence


from cache_service import client
from cache_service.handle import CacheCalls, CacheHandle
from cache_service.sdk.batches import ConsumerSettings, CropBatches
from cache_service.sdk.device import DeviceVolumes
from cache_service.snapshot import Snapshot
from cache_service.status import CacheStatus, ExperimentStatus, SamplerReport
from common.config import SamplerConfig
from common.errors import UnknownItemError
from common.scoring import ValidationResult, score, summarise  # the validation actor's scoring too


# 1. attach ------------------------------------------------------------------------------------
def attach(fingerprint: str, namespace: str) -> CacheHandle:
    """The live cache actor for ``fingerprint`` (raises CacheUnavailableError if there is none)."""
    return client.attach(fingerprint, namespace)


# 2. register ----------------------------------------------------------------------------------
def register(cache: CacheCalls, experiment_id: str, info: dict[str, Any]) -> None:
    """Attach an experiment (idempotent: registering again keeps its history)."""
    cache.register(experiment_id, info)


def heartbeat(cache: CacheCalls, experiment_id: str) -> bool:
    """Renew the experiment's lease (its owner lives); False if the cache does not know it (register again)."""
    return cache.heartbeat(experiment_id)


# 3. snapshot ----------------------------------------------------------------------------------
def wait_warm(cache: CacheCalls, timeout_s: float, progress: bool = False) -> CacheStatus:
    """Return the status once the pool's first fill is done (raise PoolFailedError if it failed): a pool
    still filling must not become an epoch. Lets a consumer attach and start up while the cache fills."""
    return client.wait_until_ready(cache, timeout_s=timeout_s, progress=progress)


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


def validation_numbers(preds: Sequence[Any], labels: Sequence[Any], num_classes: int,
                       sampler: SamplerConfig, current_ratio: float, *, epoch: int) -> ValidationResult:
    """Dice, r_FP, r_FN (means over cases) and the next ratio r' = (r_FN / r_FP) ** gamma, clamped.

    Each element of ``preds``/``labels`` is one case or a batch, in any form MONAI users hold
    (class maps or one-hot, batched or not, torch or numpy: :mod:`common.scoring`).
    """
    if len(preds) != len(labels) or not preds:
        raise ValueError(f"need matching, non-empty predictions and labels, got {len(preds)} and {len(labels)}")
    cases = [case for pred, label in zip(preds, labels) for case in score(pred, label, num_classes, sampler.formula)]
    return summarise(epoch, cases, num_classes, sampler, current_ratio)


# 7. publish the ratio -------------------------------------------------------------------------
def publish_ratio(cache: CacheCalls, experiment_id: str, epoch: int, numbers: ValidationResult) -> SamplerReport:
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
