"""The shared cache inside your own Ray Tune trainable: one line to open a trial's experiment.

    cache = SmartCache.connect("data/", address="auto")      # in the driver: the cache starts once
    def trainable(config):
        with trial_experiment(cache, batch_size=2) as exp:    # tagged with its sweep and trial
            ...
            report = exp.report_validation(epoch, preds, labels)
            ray.tune.report({"dice": report.mean_dice})

Connect (or start) the cache in the driver, not in the trainable: Tune places each trial in a
placement group that captures what the trial creates, so a cache started from a trial would
live and die with that trial's placement group instead of serving every trial. The experiment
carries ``sweep``, ``trial`` and ``trial_id`` in the info it registers with, which is how the
status API groups trials into sweeps. ``with`` detaches it when the trial ends or the scheduler
stops it; :func:`detach_trial` is the driver's second line for a trial killed before that ran.
"""

from __future__ import annotations

from typing import Any

from ray import tune

from cache_service.sdk import protocol
from cache_service.sdk.api import Experiment, SmartCache
from cache_service.status import SWEEP_KEY, TRIAL_ID_KEY, TRIAL_KEY
from common.errors import CacheUnavailableError


def trial_info(sweep: str | None = None) -> dict[str, str]:
    """The sweep (Tune's experiment name unless given), trial name and trial id of the calling trial."""
    ctx = tune.get_context()
    return {SWEEP_KEY: sweep or ctx.get_experiment_name(), TRIAL_KEY: ctx.get_trial_name(),
            TRIAL_ID_KEY: ctx.get_trial_id()}


def trial_experiment(cache: SmartCache, name: str | None = None, *, sweep: str | None = None,
                     info: dict[str, Any] | None = None, **settings: Any) -> Experiment:
    """An experiment for the calling Tune trial (named after it unless ``name``), tagged with its sweep.

    ``settings`` are those of :meth:`SmartCache.experiment` (patch_size, batch_size, steps, ...).
    """
    tags = trial_info(sweep)
    return cache.experiment(name or tags[TRIAL_KEY], info={**tags, **(info or {})}, **settings)


def detach_trial(fingerprint: str, namespace: str, trial_id: str) -> list[str]:
    """Unregister whatever experiments trial ``trial_id`` still has on the cache ``fingerprint``.

    A trial normally detaches itself; Tune may end a stopped trial's process before that has
    run, and then only the driver, which outlives every trial, can do it. Returns the ids it
    detached (none when the trial had cleaned up, or the cache is gone).
    """
    try:
        cache = protocol.attach(fingerprint, namespace)
        status = cache.status()
    except CacheUnavailableError:
        return []
    left = [e.experiment_id for e in status.experiments if e.info.get(TRIAL_ID_KEY) == trial_id]
    return [e for e in left if protocol.unregister(cache, e)]
