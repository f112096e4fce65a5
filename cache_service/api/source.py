"""Where the API gets its data: a small protocol, an in-memory source for tests, a guard for 503s.

The routes only talk to a :class:`StatusSource`. Unknown ids raise
:class:`~common.errors.UnknownItemError` (404); an unreachable cache raises
:class:`~common.errors.CacheUnavailableError` (503).
"""

from __future__ import annotations

from typing import Callable, Protocol, TypeVar

from cache_service.api.models import ExperimentView
from cache_service.status import CacheStatus, SamplerReport
from common.errors import CacheUnavailableError, SmartCacheError, UnknownItemError

T = TypeVar("T")


class StatusSource(Protocol):
    """Read-only view of the live caches of one namespace."""

    def caches(self) -> list[CacheStatus]:
        """Every live cache, sorted by fingerprint."""

    def cache(self, fingerprint: str) -> CacheStatus:
        """One cache; UnknownItemError if no live cache has that fingerprint."""

    def experiments(self) -> list[ExperimentView]:
        """Every attached experiment of every cache."""

    def sampler_history(self, experiment_id: str) -> list[SamplerReport]:
        """The sampler reports of one experiment, oldest first; UnknownItemError if unknown."""


def experiments_of(caches: list[CacheStatus]) -> list[ExperimentView]:
    """Flatten the experiments embedded in cache statuses, tagged with their cache."""
    return [ExperimentView(fingerprint=c.fingerprint, **e.model_dump()) for c in caches for e in c.experiments]


def find_experiment(experiments: list[ExperimentView], experiment_id: str) -> ExperimentView:
    for exp in experiments:
        if exp.experiment_id == experiment_id:
            return exp
    raise UnknownItemError("experiment", experiment_id)


class InMemorySource:
    """Fixed (or test-mutated) statuses; what the unit tests and the browser test serve."""

    def __init__(self, caches: list[CacheStatus] | None = None) -> None:
        self.statuses: list[CacheStatus] = list(caches or [])

    def caches(self) -> list[CacheStatus]:
        return sorted(self.statuses, key=lambda c: c.fingerprint)

    def cache(self, fingerprint: str) -> CacheStatus:
        for status in self.statuses:
            if status.fingerprint == fingerprint:
                return status
        raise UnknownItemError("cache", fingerprint)

    def experiments(self) -> list[ExperimentView]:
        return experiments_of(self.caches())

    def sampler_history(self, experiment_id: str) -> list[SamplerReport]:
        return list(find_experiment(self.experiments(), experiment_id).sampler_history)


class GuardedSource:
    """Wraps a source so that any failure but a domain error becomes CacheUnavailableError (503, not 500).

    Ray raises many kinds of errors when an actor dies mid-call or the cluster goes away;
    none of them is the client's fault, and none should surface as an internal error.
    """

    def __init__(self, inner: StatusSource, name: str = "smartcache") -> None:
        self.inner, self.name = inner, name

    def _guard(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except SmartCacheError:
            raise
        except Exception as err:  # noqa: BLE001 - translated, with its type, into a 503
            raise CacheUnavailableError(self.name, f"{type(err).__name__}: {err}") from err

    def caches(self) -> list[CacheStatus]:
        return self._guard(self.inner.caches)

    def cache(self, fingerprint: str) -> CacheStatus:
        return self._guard(lambda: self.inner.cache(fingerprint))

    def experiments(self) -> list[ExperimentView]:
        return self._guard(self.inner.experiments)

    def sampler_history(self, experiment_id: str) -> list[SamplerReport]:
        return self._guard(lambda: self.inner.sampler_history(experiment_id))
