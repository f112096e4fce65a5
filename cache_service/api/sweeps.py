"""Sweeps as the caches see them: the attached experiments that say which sweep and trial they are.

A Tune trial registers with ``sweep``, ``trial`` and ``trial_id`` in its info
(:mod:`cache_service.sdk.tune`); grouping the live experiments of every cache by that tag
gives each sweep's running trials, the cache each one trains on and its Dice, with no
registry of sweeps to keep in step. A trial that ended has detached, so it is no longer
here: the sweep's own results table (``smartcache sweep --out``) is the record of finished ones.
"""

from __future__ import annotations

from typing import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from pydantic import BaseModel, Field

from cache_service.api.models import ExperimentView
from cache_service.api.source import experiments_of
from cache_service.status import SWEEP_KEY, TRIAL_ID_KEY, TRIAL_KEY, CacheStatus


class SweepTrialView(BaseModel):
    """One trial of a sweep: its experiment on the cache, how far it is, its Dice."""

    trial: str
    trial_id: str | None = None
    experiment_id: str
    fingerprint: str
    state: str  # training (it has trained an epoch) | starting (attached, no epoch yet)
    epoch: int
    best_dice: float | None = None
    last_dice: float | None = None
    values: dict = Field(default_factory=dict)  # the searched values, when the trial says them


class SweepView(BaseModel):
    """A sweep: its live trials, the caches they share, and the best Dice among them."""

    sweep: str
    trials: list[SweepTrialView]
    caches: list[str]  # fingerprints, sorted
    best_dice: float | None = None
    best_trial: str | None = None


def trial_of(exp: ExperimentView) -> SweepTrialView:
    dices = [r.mean_dice for r in exp.sampler_history]
    values = exp.info.get("values")
    return SweepTrialView(trial=str(exp.info.get(TRIAL_KEY, exp.experiment_id)), trial_id=exp.info.get(TRIAL_ID_KEY),
                          experiment_id=exp.experiment_id, fingerprint=exp.fingerprint,
                          state="training" if exp.epoch >= 0 else "starting", epoch=exp.epoch,
                          best_dice=max(dices, default=None), last_dice=dices[-1] if dices else None,
                          values=values if isinstance(values, dict) else {})


def sweeps_of(experiments: list[ExperimentView]) -> list[SweepView]:
    """Group the experiments that carry a sweep tag by sweep (sorted by name, trials by name)."""
    groups: dict[str, list[SweepTrialView]] = {}
    for exp in experiments:
        if SWEEP_KEY in exp.info:
            groups.setdefault(str(exp.info[SWEEP_KEY]), []).append(trial_of(exp))
    views = []
    for name in sorted(groups):
        trials = sorted(groups[name], key=lambda t: t.trial)
        scored = [t for t in trials if t.best_dice is not None]
        best = max(scored, key=lambda t: t.best_dice or 0.0, default=None)
        views.append(SweepView(sweep=name, trials=trials, caches=sorted({t.fingerprint for t in trials}),
                               best_dice=best.best_dice if best else None, best_trial=best.trial if best else None))
    return views


def sweep_metrics(caches: list[CacheStatus]) -> Iterator[Metric]:
    """Prometheus gauges per sweep trial (labels sweep, trial, fingerprint): best and last Dice, epoch."""
    labels = ["sweep", "trial", "fingerprint"]
    best = GaugeMetricFamily("smartcache_sweep_trial_best_dice", "best validation mean Dice of a sweep trial",
                             labels=labels)
    last = GaugeMetricFamily("smartcache_sweep_trial_last_dice", "last validation mean Dice of a sweep trial",
                             labels=labels)
    epoch = GaugeMetricFamily("smartcache_sweep_trial_epoch", "last epoch a sweep trial reported", labels=labels)
    count = GaugeMetricFamily("smartcache_sweep_trials", "trials of a sweep attached now", labels=["sweep"])
    for sweep in sweeps_of(experiments_of(caches)):
        count.add_metric([sweep.sweep], float(len(sweep.trials)))
        for t in sweep.trials:
            key = [sweep.sweep, t.trial, t.fingerprint]
            epoch.add_metric(key, float(t.epoch))
            if t.best_dice is not None:
                best.add_metric(key, t.best_dice)
                last.add_metric(key, float(t.last_dice or 0.0))
    yield from (count, best, last, epoch)
