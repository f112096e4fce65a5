"""The live source: the cache actors of one Ray namespace, found by name and asked for their status.

Caches are detached actors named ``smartcache-<fingerprint>``; listing named actors finds
every cache any driver started, without a registry of registries. Each request asks
afresh, so a cache that started or exited a second ago is seen as such.
"""

from __future__ import annotations

from typing import Any

from cache_service.api.models import ExperimentView
from cache_service.api.source import experiments_of, find_experiment
from cache_service.status import CacheStatus, SamplerReport
from common.errors import CacheUnavailableError, UnknownItemError

CALL_TIMEOUT_S = 10.0


def cache_actor_names(namespace: str) -> list[str]:
    """Names of the cache actors alive in ``namespace``, sorted."""
    from cache_service.client import cache_actor_names as names

    return names(namespace)


class RaySource:
    """Status of the caches in ``namespace``, through :func:`cache_service.client.call`."""

    def __init__(self, namespace: str, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.namespace, self.timeout_s = namespace, timeout_s

    def _call(self, name: str, method: str, *args: Any) -> Any:
        import ray

        from cache_service.client import call

        try:
            handle = ray.get_actor(name, namespace=self.namespace)
        except ValueError as err:
            raise CacheUnavailableError(name, f"no such actor in namespace '{self.namespace}'") from err
        return call(handle, method, *args, timeout_s=self.timeout_s, name=name)

    def caches(self) -> list[CacheStatus]:
        return [self._call(name, "status") for name in cache_actor_names(self.namespace)]

    def cache(self, fingerprint: str) -> CacheStatus:
        name = f"smartcache-{fingerprint}"
        if name not in cache_actor_names(self.namespace):
            raise UnknownItemError("cache", fingerprint)
        return self._call(name, "status")

    def experiments(self) -> list[ExperimentView]:
        return experiments_of(self.caches())

    def sampler_history(self, experiment_id: str) -> list[SamplerReport]:
        exp = find_experiment(self.experiments(), experiment_id)
        return self._call(f"smartcache-{exp.fingerprint}", "sampler_history", experiment_id)
