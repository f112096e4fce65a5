"""Prometheus text for a set of cache statuses, from a fresh registry per scrape.

A per-request :class:`CollectorRegistry` holds exactly what the caches say now: a cache
that exited is simply absent, instead of lingering as a stale series in a global registry.
"""

from __future__ import annotations

from typing import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cache_service.api.sweeps import sweep_metrics
from cache_service.status import CacheStatus

CACHE_GAUGES: dict[str, tuple[str, str]] = {  # metric suffix -> (CacheStatus field, help)
    "items_cached": ("items_cached", "pool items cached now"),
    "capacity_items": ("capacity", "pool size targeted (lower when the byte budget limits it)"),
    "train_items": ("train_items", "training items in the dataset"),
    "bytes_cached": ("bytes_cached", "bytes held: pool, ready replacements, validation volumes"),
    "byte_budget_bytes": ("byte_budget", "configured byte budget"),
    "generation": ("generation", "pool generation (changes at each rotation or refill)"),
    "replacements_pending": ("replacements_pending", "replacements being prepared"),
    "replacements_ready": ("replacements_ready", "prepared replacements waiting for a rotation"),
    "val_items_cached": ("val_items_cached", "validation volumes cached"),
    "uptime_seconds": ("uptime_s", "seconds since the cache started"),
}


class StatusCollector(Collector):
    """Yields one sample per cache (label ``fingerprint``) and per experiment (``experiment``)."""

    def __init__(self, caches: list[CacheStatus]) -> None:
        self.caches = caches

    def _cache_metrics(self) -> Iterator[Metric]:
        for suffix, (field, doc) in CACHE_GAUGES.items():
            g = GaugeMetricFamily(f"smartcache_{suffix}", doc, labels=["fingerprint"])
            for c in self.caches:
                g.add_metric([c.fingerprint], float(getattr(c, field)))
            yield g
        rot = CounterMetricFamily("smartcache_rotations", "pool rotations since start", labels=["fingerprint"])
        restarts = CounterMetricFamily("smartcache_cache_restarts", "times the cache actor came back after dying",
                                       labels=["fingerprint"])
        quarantined = GaugeMetricFamily("smartcache_quarantined_items", "items whose preparation failed",
                                        labels=["fingerprint"])
        for c in self.caches:
            rot.add_metric([c.fingerprint], float(c.rotations))
            restarts.add_metric([c.fingerprint], float(c.restarts))
            quarantined.add_metric([c.fingerprint], float(len(c.quarantined)))
        yield from (rot, restarts, quarantined)

    def _experiment_metrics(self) -> Iterator[Metric]:
        labels = ["fingerprint", "experiment"]
        ratio = GaugeMetricFamily("smartcache_sampler_ratio", "pos/neg crop ratio an experiment samples with",
                                  labels=labels)
        dice = GaugeMetricFamily("smartcache_last_mean_dice", "mean Dice of the last validation round",
                                 labels=labels)
        epoch = GaugeMetricFamily("smartcache_experiment_epoch", "last epoch an experiment reported", labels=labels)
        for c in self.caches:
            for e in c.experiments:
                key = [c.fingerprint, e.experiment_id]
                ratio.add_metric(key, e.ratio)
                epoch.add_metric(key, float(e.epoch))
                if e.sampler_history:
                    dice.add_metric(key, e.sampler_history[-1].mean_dice)
        yield from (ratio, dice, epoch)
        yield from self._fault_metrics()

    def _fault_metrics(self) -> Iterator[Metric]:
        """Restarts each experiment lived through, by what restarted (trainer workers, validation actor)."""
        labels = ["fingerprint", "experiment"]
        for kind, doc in (("trainer", "Ray Train worker-group restarts of an experiment"),
                          ("validator", "restarts of an experiment's validation actor")):
            counter = CounterMetricFamily(f"smartcache_{kind}_restarts", doc, labels=labels)
            for c in self.caches:
                for e in c.experiments:
                    counter.add_metric([c.fingerprint, e.experiment_id], float(e.restarts.get(kind, 0)))
            yield counter

    def collect(self) -> Iterator[Metric]:
        live = GaugeMetricFamily("smartcache_caches", "live caches in the namespace")
        live.add_metric([], float(len(self.caches)))
        yield live
        yield from self._cache_metrics()
        yield from self._experiment_metrics()
        yield from sweep_metrics(self.caches)


def render(caches: list[CacheStatus]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(caches))
    return generate_latest(registry)
