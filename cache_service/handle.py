"""The typed handle to a cache actor: one Python method per method of :class:`SmartCacheService`.

Every call to a cache actor goes through :class:`CacheHandle`, so a misspelt method is an
``AttributeError`` that a type checker (or the first import-time use) finds, never a
failure on a remote process, and every call gets the same timeout and error mapping
(:func:`resolve`): the service's own errors come back as themselves, a dead, stopped or
silent actor as :class:`~common.errors.CacheUnavailableError`, the Ray error kept as the
cause. :class:`CacheCalls` is what a consumer needs from a cache; the plain handle and
:class:`cache_service.recovery.ResilientCache` (which re-attaches behind each call) both
provide it.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import ray
from ray.actor import ActorHandle
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from cache_service.snapshot import Snapshot
from cache_service.status import CacheStatus, FaultEvent, SamplerReport
from common.errors import CacheUnavailableError, SmartCacheError, describe_error

DEFAULT_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def resolve(ref: ray.ObjectRef, *, name: str, what: str, timeout_s: float) -> Any:
    """``ray.get(ref)`` of one actor call, with the project's errors (``from`` the Ray error).

    ``name`` is the actor (for the message), ``what`` the call (``"status()"``).
    """
    try:
        return ray.get(ref, timeout=timeout_s)
    except RayTaskError as err:
        if isinstance(err.cause, SmartCacheError):
            raise err.cause from err
        raise
    except RayActorError as err:
        raise CacheUnavailableError(name, f"the actor died or was stopped ({type(err).__name__})") from err
    except GetTimeoutError as err:
        raise CacheUnavailableError(name, f"no answer to {what} within {timeout_s:.0f}s") from err


def task_error_text(err: BaseException) -> str:
    """What went wrong in a Ray task, told by its cause (the task's own exception), not by Ray's wrapper."""
    cause = err.cause if isinstance(err, RayTaskError) and err.cause is not None else err
    return describe_error(cause)


class CacheCalls(Protocol):
    """What a consumer asks of the cache of one fingerprint (the actor's public methods, typed)."""

    name: str

    def ping(self) -> dict[str, Any]: ...

    def status(self) -> CacheStatus: ...

    def record_fault(self, experiment_id: str, event: FaultEvent) -> None: ...

    def snapshot(self, experiment_id: str, epoch: int | None = None) -> Snapshot: ...

    def val_snapshot(self) -> Snapshot: ...

    def register(self, experiment_id: str, info: dict[str, Any] | None = None) -> None: ...

    def unregister(self, experiment_id: str) -> bool: ...

    def heartbeat(self, experiment_id: str) -> bool: ...

    def report_progress(self, experiment_id: str, epoch: int, metrics: dict[str, float] | None = None) -> bool: ...

    def publish_sampler(self, experiment_id: str, ratio: float, r_fp: float, r_fn: float,
                        dice_per_class: Sequence[float], mean_dice: float, epoch: int) -> SamplerReport: ...

    def get_ratio(self, experiment_id: str) -> float: ...

    def sampler_history(self, experiment_id: str) -> list[SamplerReport]: ...

    def stop(self) -> None: ...


class CacheHandle:
    """One cache actor, called through typed methods with a timeout each (see the module docstring).

    Picklable (the Ray actor handle is), so it can be handed to Ray tasks and actors.
    """

    def __init__(self, actor: ActorHandle, name: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.actor, self.name, self.timeout_s = actor, name, timeout_s

    def _get(self, ref: ray.ObjectRef, what: str, timeout_s: float | None = None) -> Any:
        return resolve(ref, name=self.name, what=what, timeout_s=self.timeout_s if timeout_s is None else timeout_s)

    def ping(self, timeout_s: float | None = None) -> dict[str, Any]:
        """Name, fingerprint, actor id, pid and restarts: the cheapest sign of life."""
        return self._get(self.actor.ping.remote(), "ping()", timeout_s)

    def status(self) -> CacheStatus:
        """Pool, budget, rotations, quarantine and every attached experiment."""
        return self._get(self.actor.status.remote(), "status()")

    def record_fault(self, experiment_id: str, event: FaultEvent) -> None:
        """Count a consumer's fault (a trainer or validator restart) for its experiment."""
        self._get(self.actor.record_fault.remote(experiment_id, event), "record_fault()")

    def snapshot(self, experiment_id: str, epoch: int | None = None) -> Snapshot:
        """The pool now (the same one for every caller of one ``epoch``) and the experiment's ratio."""
        return self._get(self.actor.snapshot.remote(experiment_id, epoch=epoch), "snapshot()")

    def val_snapshot(self) -> Snapshot:
        """The cached validation volumes."""
        return self._get(self.actor.val_snapshot.remote(), "val_snapshot()")

    def register(self, experiment_id: str, info: dict[str, Any] | None = None) -> None:
        """Attach an experiment: the pool does not rotate away from it unseen."""
        self._get(self.actor.register.remote(experiment_id, info), "register()")

    def unregister(self, experiment_id: str) -> bool:
        """Detach an experiment; False if it was not attached."""
        return bool(self._get(self.actor.unregister.remote(experiment_id), "unregister()"))

    def heartbeat(self, experiment_id: str) -> bool:
        """Renew the experiment's lease (its owner is alive); False if the cache does not know it."""
        return bool(self._get(self.actor.heartbeat.remote(experiment_id), "heartbeat()"))

    def report_progress(self, experiment_id: str, epoch: int, metrics: dict[str, float] | None = None) -> bool:
        """An epoch is done; returns whether the pool rotated (once every experiment is done with it)."""
        return bool(self._get(self.actor.report_progress.remote(experiment_id, epoch, metrics), "report_progress()"))

    def publish_sampler(self, experiment_id: str, ratio: float, r_fp: float, r_fn: float,
                        dice_per_class: Sequence[float], mean_dice: float, epoch: int) -> SamplerReport:
        """Store a validation result; the experiment's next snapshot carries ``ratio``."""
        ref = self.actor.publish_sampler.remote(experiment_id, ratio, r_fp, r_fn, list(dice_per_class), mean_dice,
                                                epoch)
        return self._get(ref, "publish_sampler()")

    def get_ratio(self, experiment_id: str) -> float:
        """The pos/neg ratio of the experiment's next snapshot."""
        return float(self._get(self.actor.get_ratio.remote(experiment_id), "get_ratio()"))

    def sampler_history(self, experiment_id: str) -> list[SamplerReport]:
        """Every sampler update published for the experiment, oldest first."""
        return self._get(self.actor.sampler_history.remote(experiment_id), "sampler_history()")

    def stop(self) -> None:
        """Stop the actor's pump (:func:`cache_service.client.stop_cache` then kills the actor)."""
        self._get(self.actor.stop.remote(), "stop()", STOP_TIMEOUT_S)
