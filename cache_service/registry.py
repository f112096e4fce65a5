"""Experiment registry: who is attached, how far they are, and the sampler status published for them.

Plain bookkeeping with the clock passed in, so it is tested without Ray or sleeping. It
round-trips through :class:`~cache_service.status.RegistryState`, which the cache writes
atomically to disk on every change (:func:`save_state`) and reads back when Ray restarts it,
so progress, ratios, sampler histories and fault counts outlive the cache's process.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Sequence

from pydantic import ValidationError

from cache_service.status import DetachedExperiment, ExperimentStatus, FaultEvent, RegistryState, SamplerReport
from common.atomic import atomic_write
from common.errors import UnknownItemError
from common.fair_rotation import Attached, CycleProgress, advance_cycle, holding_back, rotation_due
from common.liveness import expired_leases, lease_reason

if TYPE_CHECKING:
    from cache_service.pool import CacheBook

__all__ = ["ExperimentRegistry", "load_state", "save_state"]

log = logging.getLogger(__name__)

KEEP_DETACHED = 100  # detach records kept for the status (oldest dropped first)


class ExperimentRegistry:
    """Experiments attached to one cache; a trainer reads its ratio here every epoch."""

    def __init__(self, default_ratio: float = 1.0) -> None:
        self.default_ratio = default_ratio
        self._experiments: dict[str, ExperimentStatus] = {}
        self.last_detach: float | None = None
        self.detached: list[DetachedExperiment] = []

    def __len__(self) -> int:
        return len(self._experiments)

    def register(self, experiment_id: str, info: dict[str, Any] | None, now: float) -> ExperimentStatus:
        """Attach (idempotent: re-registering keeps history, updates info)."""
        info = dict(info or {})
        if experiment_id in self._experiments:
            self._experiments[experiment_id].info.update(info)
        else:
            ratio = float(info.get("initial_ratio", self.default_ratio))
            self._experiments[experiment_id] = ExperimentStatus(
                experiment_id=experiment_id, info=info, registered_at=now, ratio=ratio)
        return self._experiments[experiment_id]

    def unregister(self, experiment_id: str, now: float) -> bool:
        """Detach; returns False if it was not attached. The idle clock starts when the last one leaves."""
        gone = self._experiments.pop(experiment_id, None) is not None
        if gone and not self._experiments:
            self.last_detach = now
        return gone

    def heartbeat(self, experiment_id: str, now: float) -> bool:
        """Renew the experiment's lease (the first renewal starts it); False if it is not attached."""
        exp = self._experiments.get(experiment_id)
        if exp is not None:
            exp.last_heartbeat = now
        return exp is not None

    def expire(self, now: float, lease_s: float) -> list[DetachedExperiment]:
        """Detach every experiment whose lease ran out (:mod:`common.liveness`) and record why."""
        gone = []
        leases = {k: e.last_heartbeat for k, e in self._experiments.items()}
        for name, last in expired_leases(leases, now, lease_s).items():
            reason = lease_reason(last, now, lease_s)
            gone.append(DetachedExperiment(experiment_id=name, reason=reason, time=now))
            self.unregister(name, now)
            log.warning("detached experiment %s: %s", name, reason)
        self.detached = (self.detached + gone)[-KEEP_DETACHED:]
        return gone

    def renew_all(self, now: float) -> None:
        """Restart every lease's clock: after a cache restart the owners' silence was the cache's, not theirs."""
        for exp in self._experiments.values():
            if exp.last_heartbeat is not None:
                exp.last_heartbeat = now

    def get(self, experiment_id: str) -> ExperimentStatus:
        try:
            return self._experiments[experiment_id]
        except KeyError:
            raise UnknownItemError("experiment", experiment_id) from None

    def report_progress(self, experiment_id: str, epoch: int, metrics: dict[str, float] | None,
                        now: float) -> ExperimentStatus:
        exp = self.get(experiment_id)
        exp.epoch, exp.last_report_at = int(epoch), now
        exp.progress.update({k: float(v) for k, v in (metrics or {}).items()})
        return exp

    def record_epoch(self, experiment_id: str, generation: int, item_ids: Sequence[str],
                     active: Collection[str]) -> ExperimentStatus:
        """An epoch on pool ``generation`` over ``item_ids`` finished: update its fair-rotation state."""
        exp = self.get(experiment_id)
        if generation <= exp.done_generation:
            exp.repeated_epochs += 1
        exp.done_generation = max(exp.done_generation, int(generation))
        cycle = advance_cycle(CycleProgress(frozenset(exp.cycle_seen), exp.cycles_completed), item_ids, active)
        exp.cycle_seen, exp.cycles_completed = sorted(cycle.seen), cycle.cycles_completed
        exp.cycle_coverage = cycle.coverage(active)
        return exp

    def attached(self) -> dict[str, Attached]:
        """What the fair-rotation rule (:mod:`common.fair_rotation`) needs to know of each attached experiment."""
        return {k: Attached(e.done_generation, e.last_report_at or e.registered_at)
                for k, e in self._experiments.items()}

    def holding_back(self, generation: int, now: float, stale_after_s: float) -> list[str]:
        """Attached experiments that the rotation to the next generation still waits for."""
        return holding_back(generation, self.attached(), now, stale_after_s)

    def publish_sampler(self, experiment_id: str, ratio: float, r_fp: float, r_fn: float,
                        dice_per_class: Sequence[float], mean_dice: float, epoch: int, now: float) -> SamplerReport:
        """Store a sampler update; the next ``get_ratio`` returns its ratio."""
        exp = self.get(experiment_id)
        report = SamplerReport(epoch=int(epoch), ratio=float(ratio), r_fp=float(r_fp), r_fn=float(r_fn),
                               dice_per_class=[float(d) for d in dice_per_class], mean_dice=float(mean_dice),
                               time=now)
        exp.sampler_history.append(report)
        exp.ratio = report.ratio
        return report

    def get_ratio(self, experiment_id: str) -> float:
        """The experiment's current pos/neg ratio: its initial ratio until the first publish."""
        return self.get(experiment_id).ratio

    def statuses(self) -> list[ExperimentStatus]:
        return [e.model_copy(deep=True) for e in self._experiments.values()]

    def record_fault(self, experiment_id: str | None, event: FaultEvent) -> None:
        """Count a fault for one experiment, or for every attached one (``None``: a cache restart hits all)."""
        targets = list(self._experiments.values()) if experiment_id is None else [self.get(experiment_id)]
        for exp in targets:  # a fault without an epoch happened at the epoch each experiment was at
            mine = event if event.epoch is not None else event.model_copy(update={"epoch": exp.epoch})
            exp.restarts[event.kind] = exp.restarts.get(event.kind, 0) + 1
            exp.last_fault = mine.model_copy()
            exp.faults.append(mine.model_copy())

    def settle_fault(self, event: FaultEvent) -> None:
        """Fill in the cost of a fault recorded earlier (matched by kind and time) once it is known."""
        for exp in self._experiments.values():
            for f in exp.faults + ([exp.last_fault] if exp.last_fault else []):
                if f.kind == event.kind and f.time == event.time:
                    f.seconds_lost = event.seconds_lost

    def to_state(self, restarts: int, last_fault: FaultEvent | None) -> RegistryState:
        return RegistryState(experiments=self.statuses(), last_detach=self.last_detach, restarts=restarts,
                             last_fault=last_fault, detached=[d.model_copy() for d in self.detached])

    @classmethod
    def from_state(cls, state: RegistryState, default_ratio: float) -> "ExperimentRegistry":
        reg = cls(default_ratio)
        reg._experiments = {e.experiment_id: e.model_copy(deep=True) for e in state.experiments}
        reg.last_detach = state.last_detach
        reg.detached = [d.model_copy() for d in state.detached]
        return reg


def save_state(path: Path, state: RegistryState) -> None:
    """Write atomically (temp file + rename): a reader after a crash sees the old or the new file, never half."""
    atomic_write(path, lambda fh: fh.write(state.model_dump_json()), mode="w", suffix=".json")


def load_state(path: Path) -> RegistryState | None:
    """The saved state, or None when there is none or it cannot be parsed (logged, then started afresh)."""
    try:
        return RegistryState.model_validate_json(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError, ValueError) as err:
        log.warning("ignoring unreadable registry state %s: %s", path, err)
        return None


def restore_registry(path: Path, default_ratio: float, now: float) -> tuple[ExperimentRegistry, int, FaultEvent]:
    """After the cache's process died and Ray restarted it: the saved registry, the restart count and its fault.

    The fault is counted for every experiment, and every lease starts again from ``now``:
    while the cache was down its owners could not renew, which says nothing about them.
    """
    state = load_state(path)
    registry = ExperimentRegistry.from_state(state, default_ratio) if state else ExperimentRegistry(default_ratio)
    restarts = (state.restarts if state else 0) + 1
    fault = FaultEvent(kind="cache", time=now, cause=f"the cache actor's process died; Ray restarted it (restart "
                                                     f"{restarts}, pid {os.getpid()}) and it warms again")
    registry.record_fault(None, fault)
    registry.renew_all(now)
    return registry, restarts, fault


def end_epoch(registry: ExperimentRegistry, book: "CacheBook", experiment_id: str, epoch: int,
              metrics: dict[str, float] | None, trained_on: tuple[int, Sequence[str]] | None, now: float,
              stale_after_s: float) -> bool:
    """An experiment finished ``epoch`` on ``trained_on`` = (generation, item ids); rotate if that is fair.

    The pool rotates only when every live attached experiment has completed an epoch on
    the current generation (:mod:`common.fair_rotation`). Returns whether it rotated.
    """
    registry.report_progress(experiment_id, epoch, metrics, now)
    if trained_on is not None:
        registry.record_epoch(experiment_id, trained_on[0], trained_on[1], book.plan.pool + book.plan.waiting)
    return rotate_if_due(registry, book, now, stale_after_s)


def rotate_if_due(registry: ExperimentRegistry, book: "CacheBook", now: float, stale_after_s: float) -> bool:
    """Rotate once no live attached experiment is still owed the current generation; returns whether it rotated.

    Called after an epoch ends and after a detach (the one that left may have been the only one waited for).
    """
    if not rotation_due(book.plan.generation, registry.attached(), now, stale_after_s):
        return False
    rot = book.rotate()
    return bool(rot.entering or rot.leaving)
