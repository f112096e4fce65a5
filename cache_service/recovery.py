"""Consumers that survive a cache restart: re-attach with backoff, take a fresh snapshot, carry on.

Ownership (see docs/reliability.md): every cached volume is returned by a task the cache
actor submitted, so the actor owns it and Ray frees it when the actor's process dies, even
while a consumer still holds the ref. Rather than move ownership somewhere that could die
just the same, a consumer treats a lost volume like a lost connection:

- :class:`ResilientCache` offers the typed calls of :class:`~cache_service.handle.CacheCalls`
  and wraps each of them; when the cache is away (actor dead, restarting,
  or still warming after its restart) it waits with :class:`~common.backoff.Backoff`,
  re-attaches by name, re-registers its experiment if the registry lost it, and retries.
- :class:`RecoveringFetch` is the ``fetch`` a trainer hands its batch producer: a volume
  whose owner died (``OwnerDiedError``/``ObjectLostError``) is replaced by the volume at the
  same position of a fresh snapshot of the same epoch, so the epoch is finished, not
  repeated, and every DDP rank still takes the same number of steps.

Only when the cache is not back within ``cache.recover_timeout_s`` does the caller get a
:class:`~common.errors.CacheUnavailableError` saying so.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
import ray
from ray.exceptions import ObjectLostError, RayActorError

from cache_service.client import attach
from cache_service.handle import DEFAULT_TIMEOUT_S, CacheHandle
from cache_service.names import cache_name
from cache_service.snapshot import Snapshot
from cache_service.status import CacheStatus, FaultEvent, SamplerReport
from common.backoff import Backoff
from common.errors import CacheUnavailableError, PoolFailedError, UnknownItemError

__all__ = ["RecoveringFetch", "ResilientCache", "LOST_OBJECT_ERRORS"]

log = logging.getLogger(__name__)

LOST_OBJECT_ERRORS = (ObjectLostError, RayActorError)  # OwnerDiedError is an ObjectLostError

T = TypeVar("T")


class ResilientCache:
    """A handle to the cache of one fingerprint that re-attaches when the actor dies and comes back."""

    def __init__(self, fingerprint: str, namespace: str, recover_timeout_s: float, *,
                 experiment_id: str | None = None, info: dict[str, Any] | None = None,
                 call_timeout_s: float = DEFAULT_TIMEOUT_S, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, rng: np.random.Generator | None = None) -> None:
        self.fingerprint, self.namespace, self.name = fingerprint, namespace, cache_name(fingerprint)
        self.policy = Backoff(timeout_s=recover_timeout_s)
        self.experiment_id, self.info = experiment_id, info
        self.call_timeout_s, self._sleep, self._clock = call_timeout_s, sleep, clock
        self._rng = rng if rng is not None else np.random.default_rng()
        self._lock = threading.Lock()
        self.handle: CacheHandle
        self.recoveries: list[float] = []  # seconds each recovery waited
        self._connect_or_recover()

    def _connect_or_recover(self) -> None:
        try:
            self.handle = attach(self.fingerprint, self.namespace, timeout_s=self.call_timeout_s)
        except CacheUnavailableError as err:
            self.recover(err)

    def _retrying(self, fn: Callable[[CacheHandle], T]) -> T:
        """``fn(handle)``; while the cache is away, recover and retry (bounded in time by ``recover``).

        A cache that no longer knows our experiment gets it registered again, once per call:
        if it still answers "unknown", the unknown thing is not ours and the error stands.
        """
        reregistered = False
        while True:
            try:
                return fn(self.handle)
            except CacheUnavailableError as err:
                self.recover(err)
            except UnknownItemError:
                if self.experiment_id is None or reregistered:
                    raise
                self._reregister()
                reregistered = True

    # ---- the typed calls (cache_service.handle.CacheCalls), each behind _retrying ----------------
    def ping(self) -> dict[str, Any]:
        return self._retrying(lambda h: h.ping())

    def status(self) -> CacheStatus:
        return self._retrying(lambda h: h.status())

    def record_fault(self, experiment_id: str, event: FaultEvent) -> None:
        self._retrying(lambda h: h.record_fault(experiment_id, event))

    def snapshot(self, experiment_id: str, epoch: int | None = None) -> Snapshot:
        return self._retrying(lambda h: h.snapshot(experiment_id, epoch=epoch))

    def val_snapshot(self) -> Snapshot:
        return self._retrying(lambda h: h.val_snapshot())

    def register(self, experiment_id: str, info: dict[str, Any] | None = None) -> None:
        self._retrying(lambda h: h.register(experiment_id, info))

    def unregister(self, experiment_id: str) -> bool:
        return self._retrying(lambda h: h.unregister(experiment_id))

    def heartbeat(self, experiment_id: str) -> bool:
        return self._retrying(lambda h: h.heartbeat(experiment_id))

    def report_progress(self, experiment_id: str, epoch: int, metrics: dict[str, float] | None = None) -> bool:
        return self._retrying(lambda h: h.report_progress(experiment_id, epoch, metrics))

    def publish_sampler(self, experiment_id: str, ratio: float, r_fp: float, r_fn: float,
                        dice_per_class: Sequence[float], mean_dice: float, epoch: int) -> SamplerReport:
        return self._retrying(lambda h: h.publish_sampler(experiment_id, ratio, r_fp, r_fn, dice_per_class,
                                                          mean_dice, epoch))

    def get_ratio(self, experiment_id: str) -> float:
        return self._retrying(lambda h: h.get_ratio(experiment_id))

    def sampler_history(self, experiment_id: str) -> list[SamplerReport]:
        return self._retrying(lambda h: h.sampler_history(experiment_id))

    def stop(self) -> None:
        """Not retried: a cache being stopped must not be waited for until it comes back."""
        self.handle.stop()

    def _reregister(self) -> None:
        """The cache came back without our experiment (its saved registry was unreadable): attach it again."""
        log.warning("cache %s does not know experiment %s any more; registering it again", self.name,
                    self.experiment_id)
        self.handle.register(self.experiment_id, self.info)

    def recover(self, cause: BaseException) -> float:
        """Wait (with backoff) until the cache answers and is warm again; returns the seconds waited.

        ``recover_timeout_s`` bounds how long the cache may stay *away*: once it answers and its
        fill moves on (one more volume prepared or quarantined), the timeout counts from then, so
        a restarted cache that refills a large pool without a disk tier is waited for, not given
        up on. A cache whose every training item failed raises
        :class:`~common.errors.PoolFailedError` at once. Threads that hit the same outage queue on
        a lock, and the later ones find the cache back at once.
        """
        with self._lock:
            clock = self.policy.start(self._clock(), self._rng)
            started, last, done = clock.started, cause, -1
            log.warning("cache %s unavailable (%s); re-attaching for up to %.0fs", self.name, cause,
                        self.policy.timeout_s)
            while True:
                try:
                    self.handle = attach(self.fingerprint, self.namespace, timeout_s=self.call_timeout_s)
                    status = self._status_after_restart()
                    if status.state == "ready":
                        waited = max(0.0, self._clock() - started)
                        self.recoveries.append(waited)
                        log.warning("cache %s is back after %.1fs", self.name, waited)
                        return waited
                    if status.state == "failed":
                        raise PoolFailedError(status.name, status.train_items, status.failure) from cause
                    if (now_done := _fill_done(status)) > done:  # alive and filling: not away
                        done = now_done
                        clock.renew(self._clock())
                    last = CacheUnavailableError(self.name, f"still filling ({done} volumes prepared)")
                except CacheUnavailableError as err:
                    last = err
                delay = clock.next_delay(self._clock())
                if delay is None:
                    raise CacheUnavailableError(
                        self.name, f"did not come back within cache.recover_timeout_s={self.policy.timeout_s:g}s "
                                   f"(last error: {last}); the run stops here. Check the cache with "
                                   f"`smartcache status`, or raise cache.recover_timeout_s") from cause
                self._sleep(delay)

    def _status_after_restart(self) -> CacheStatus:
        """The cache's status, re-registering our experiment if the restart lost it."""
        status = self.handle.status()
        known = {e.experiment_id for e in status.experiments}
        if self.experiment_id is not None and self.experiment_id not in known:
            self._reregister()
        return status

    def fetcher(self, snapshot: Snapshot, experiment_id: str, epoch: int | None) -> "RecoveringFetch":
        """The ``fetch`` for one epoch's snapshot: lost volumes come from a fresh snapshot of that epoch."""
        return RecoveringFetch(self, snapshot, lambda: self.snapshot(experiment_id, epoch=epoch))


def _fill_done(status: CacheStatus) -> int:
    """Volumes the fill has dealt with (cached or quarantined): it grows while a cache warms."""
    return status.items_cached + status.val_items_cached + len(status.quarantined)


class RecoveringFetch:
    """``ray.get`` for the refs of one snapshot that survives the death of their owner.

    A ref whose object is lost is mapped to the ref at the same position in a fresh
    snapshot (``retake``: the same epoch's pool, or the validation volumes) from the
    restarted cache; it is taken once and shared by every later lookup.
    """

    def __init__(self, cache: ResilientCache, snapshot: Snapshot, retake: Callable[[], Snapshot],
                 get: Callable[[Any], Any] = ray.get) -> None:
        self.cache, self._retake, self._get = cache, retake, get
        self._position = {ref: k for k, ref in enumerate(snapshot.refs)}
        self._fresh: Snapshot | None = None
        self._lock = threading.Lock()
        self.replaced = 0

    RETAKES = 3  # fresh snapshots tried for one lookup (the cache may die again while we read)

    def __call__(self, ref: Any) -> Any:
        try:
            return self._get(ref)
        except LOST_OBJECT_ERRORS as err:
            last: BaseException = err
        for _ in range(self.RETAKES):
            fresh = self._replacement(ref, last)
            try:
                return self._get(fresh)
            except LOST_OBJECT_ERRORS as err:
                last = err
                with self._lock:  # that snapshot died too: the next lookup takes another
                    if self._fresh is not None and fresh in self._fresh.refs:
                        self._fresh = None
        raise CacheUnavailableError(self.cache.name, f"lost its volumes {self.RETAKES} times in one epoch "
                                                     f"({type(last).__name__})") from last

    def _replacement(self, ref: Any, err: BaseException) -> Any:
        with self._lock:
            if self._fresh is None:
                log.warning("a cached volume was lost with its owner (%s); taking a fresh snapshot",
                            type(err).__name__)
                self.cache.recover(err)
                self._fresh = self._retake()
                if not self._fresh.refs:
                    raise CacheUnavailableError(self.cache.name, "came back with an empty pool") from err
            self.replaced += 1
            refs = self._fresh.refs
            return refs[self._position.get(ref, 0) % len(refs)]
