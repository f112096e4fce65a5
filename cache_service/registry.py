"""Experiment registry: who is attached, how far they are, and the sampler status published for them.

Plain bookkeeping with the clock passed in, so it is tested without Ray or sleeping.
"""

from __future__ import annotations

from typing import Any, Sequence

from cache_service.status import ExperimentStatus, SamplerReport
from common.errors import UnknownItemError


class ExperimentRegistry:
    """Experiments attached to one cache; a trainer reads its ratio here every epoch."""

    def __init__(self, default_ratio: float = 1.0) -> None:
        self.default_ratio = default_ratio
        self._experiments: dict[str, ExperimentStatus] = {}
        self.last_detach: float | None = None

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

    def max_epoch(self) -> int:
        return max((e.epoch for e in self._experiments.values()), default=-1)

    def statuses(self) -> list[ExperimentStatus]:
        return [e.model_copy(deep=True) for e in self._experiments.values()]
