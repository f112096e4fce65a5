"""The live source: the cache actors of one Ray namespace, found by name and asked for their status.

Caches are detached actors named by :func:`cache_service.names.cache_name`; listing named
actors finds every cache any driver started, without a registry of registries. Each
request asks afresh, so a cache that started or exited a second ago is seen as such.
"""

from __future__ import annotations

from cache_service.api.models import ExperimentView
from cache_service.api.source import experiments_of, find_experiment
from cache_service.client import cache_actor_names, lookup
from cache_service.handle import CacheHandle
from cache_service.names import cache_name
from cache_service.status import CacheStatus, SamplerReport
from common.errors import UnknownItemError

CALL_TIMEOUT_S = 10.0


class RaySource:
    """Status of the caches in ``namespace``, through their typed handles (:mod:`cache_service.handle`)."""

    def __init__(self, namespace: str, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.namespace, self.timeout_s = namespace, timeout_s

    def _handle(self, name: str) -> CacheHandle:
        return lookup(name, self.namespace, self.timeout_s)

    def caches(self) -> list[CacheStatus]:
        return [self._handle(name).status() for name in cache_actor_names(self.namespace)]

    def cache(self, fingerprint: str) -> CacheStatus:
        name = cache_name(fingerprint)
        if name not in cache_actor_names(self.namespace):
            raise UnknownItemError("cache", fingerprint)
        return self._handle(name).status()

    def experiments(self) -> list[ExperimentView]:
        return experiments_of(self.caches())

    def sampler_history(self, experiment_id: str) -> list[SamplerReport]:
        exp = find_experiment(self.experiments(), experiment_id)
        return self._handle(cache_name(exp.fingerprint)).sampler_history(experiment_id)
