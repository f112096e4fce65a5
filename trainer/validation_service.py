"""The validation service: one per experiment, beside the trainers, never in their way.

Usually an actor of its own; in process (``training.runner``) an object in the trainer's
process (:mod:`trainer.validator_link`). A thin shell around
:class:`trainer.validation.Validator`: it reads the validation volumes from the shared cache
once (whole volumes, deterministic prefix only; without a cache it prepares them itself,
once, with the same preprocessor), runs when rank 0 hands
it weights, keeps the best weights for the final picture, and publishes Dice, r_FP, r_FN
and the next ratio to the cache registry, where the trainers pick the ratio up at their
next epoch (without a cache, from :meth:`ratio`). Run as a threaded actor so ``best()``
answers while a validation is in progress.

It also keeps the run's record (validation rows, rank 0's training rows, faults, best
weights) in :class:`trainer.run_state.RunState` under the run folder, so when its process
dies and Ray restarts it (``max_restarts``; calls in flight are retried), it carries on from
there. Faults seen by any part of the run are logged here and forwarded to the cache's
registry, where ``/experiments/{id}`` shows them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import numpy as np
import ray
import torch

from cache_service.recovery import RecoveringFetch, ResilientCache
from cache_service.sdk import protocol
from cache_service.status import FaultEvent
from common.catalog import Record
from common.config import ExperimentConfig
from common.errors import SmartCacheError
from common.preprocess import Preprocessor
from common.scoring import ValidationResult
from common.volume import PreparedVolume
from trainer.run_state import RunState
from trainer.validation import Validator, predict_volume

log = logging.getLogger(__name__)


def _restarted_actor() -> bool:
    """Whether this process is the validation actor, restarted by Ray (in process, it is no actor of its own)."""
    if not ray.is_initialized():  # asking the runtime context would start a local Ray
        return False
    ctx = ray.get_runtime_context()
    return ctx.get_actor_id() is not None and ctx.was_current_actor_reconstructed


class ValidationService:
    def __init__(self, cfg: ExperimentConfig, fingerprint: str, experiment_id: str, num_classes: int,
                 in_channels: int, t_start: float, state_dir: str,
                 own_volumes: tuple[list[Record], Preprocessor] | None = None) -> None:
        self.cfg = cfg
        self.experiment_id, self.t_start = experiment_id, t_start
        self.own_volumes = own_volumes  # (validation records, preprocessor) when there is no cache
        self.cache = None if own_volumes is not None else ResilientCache(
            fingerprint, self.cfg.cache.namespace, self.cfg.cache.recover_timeout_s, experiment_id=experiment_id)
        self.validator = Validator(self.cfg, num_classes, in_channels, publish=self._publish)
        self._lock = threading.Lock()
        self.state = RunState.load(state_dir)
        self._trainer_cause = ""
        self._volumes: list[PreparedVolume] | None = None
        self._best_prediction: np.ndarray | None = None  # the first volume under the best weights, if seen here
        self._val_refs: tuple[Any, ...] = ()
        if _restarted_actor():
            last = max(self.state.val_rows, default=None)
            self.record_fault({"kind": "validator", "time": time.time(), "epoch": last, "cause":
                               f"the validation actor's process died; Ray restarted it (pid {os.getpid()}) with "
                               f"{len(self.state.val_rows)} validation rows and the best weights from "
                               f"{state_dir}; a validation cut short is run again"})

    def pid(self) -> int:
        return os.getpid()

    def _validation_volumes(self) -> list[PreparedVolume]:
        if self._volumes is None and self.own_volumes is not None:
            records, preprocessor = self.own_volumes
            self._volumes = [preprocessor(r) for r in records]
        if self._volumes is None:
            snap = protocol.validation_snapshot(self.cache)
            self._val_refs = snap.refs  # holding the refs keeps the volumes readable
            fetch = RecoveringFetch(self.cache, snap, self.cache.val_snapshot)
            self._volumes = [fetch(r) for r in snap.refs]
        return self._volumes

    def _publish(self, result: ValidationResult) -> None:
        if self.cache is not None:  # the baseline has no cache: trainers read ratio() instead
            protocol.publish_ratio(self.cache, self.experiment_id, result.epoch, result)

    def ratio(self) -> float:
        """The latest pos/neg ratio, for trainers when there is no cache registry to hold it."""
        return float(self.validator.ratio)

    def validate(self, epoch: int, weights: dict[str, torch.Tensor], train_time_s: float) -> dict[str, Any]:
        with self._lock:  # one validation at a time; best() stays answerable
            result = self.validator.validate(epoch, weights, self._validation_volumes())
            row = {**result.to_dict(), "time_s": time.time() - self.t_start, "train_time_s": train_time_s}
            if self.state.add_validation(row, weights):  # a new best: its picture is this validation's first map
                self._best_prediction = self.validator.first_prediction
            return row

    def record_train(self, row: dict[str, Any]) -> None:
        """Each rank's per-epoch training metrics, kept here so the launcher finds them in one place."""
        self.state.add_train(row)

    def train_rows(self) -> list[dict[str, Any]]:
        return self.state.train_history()

    def best(self) -> float | None:
        return None if self.state.best is None else self.state.best[0]

    def decide_start(self, go: bool) -> None:
        """The launcher's word once the cache's fill is done and checked: train, or give up (the run failed)."""
        self.state.decide_start(go)

    def may_start(self) -> bool | None:
        """What the trainers wait on before their first epoch (None: the launcher has not decided yet)."""
        return self.state.start

    def history(self) -> list[dict[str, Any]]:
        return self.state.history()

    def best_weights(self) -> dict[str, torch.Tensor] | None:
        return None if self.state.best is None else self.state.best[1]

    # ---- faults ----------------------------------------------------------------------------
    def note_trainer_failure(self, cause: str) -> None:
        """Ray Train's controller saw workers fail (the launcher's callback); the restart record uses it."""
        self._trainer_cause = cause

    def trainer_started(self, start_epoch: int, now: float) -> dict[str, Any] | None:
        """Rank 0 starts at ``start_epoch``; if this is a restart of the worker group, record what it cost.

        It is a restart when Ray Train's controller reported failed workers, or when epochs
        from ``start_epoch`` on were already trained. Seconds lost: from the end of the
        checkpointed epoch to now, i.e. the epochs trained again plus the time to bring the
        worker group back.
        """
        again = any(rank == 0 and e >= start_epoch for (e, rank) in self.state.train_rows)
        if not (self._trainer_cause or again):
            return None
        fault = self._trainer_restarted(start_epoch, now)
        self._trainer_cause = ""
        return fault

    def _trainer_restarted(self, resumed_epoch: int, now: float) -> dict[str, Any]:
        rows = [r for (e, rank), r in self.state.train_rows.items() if rank == 0 and e == resumed_epoch - 1]
        since = rows[0]["time_s"] if rows else 0.0
        lost_epochs = sum(1 for (e, rank) in self.state.train_rows if rank == 0 and e >= resumed_epoch)
        return self.record_fault({"kind": "trainer", "time": now, "epoch": resumed_epoch,
                                  "seconds_lost": max(0.0, now - self.t_start - since),
                                  "cause": (self._trainer_cause or "a training worker failed") +
                                  f"; Ray Train restarted the worker group from the checkpoint of epoch "
                                  f"{resumed_epoch - 1}, {lost_epochs} epoch(s) trained again"})

    def record_fault(self, fault: dict[str, Any]) -> dict[str, Any]:
        """Keep a fault in the run record and count it in the cache registry (best effort there)."""
        event = FaultEvent(**fault)
        self.state.add_fault(event.model_dump())
        try:
            if self.cache is not None:
                self.cache.record_fault(self.experiment_id, event)
        except SmartCacheError as err:
            log.warning("could not record %s fault in the cache registry: %s", event.kind, err)
        return event.model_dump()

    def faults(self) -> list[dict[str, Any]]:
        return list(self.state.faults)

    def example_case(self) -> tuple[str, np.ndarray, np.ndarray, np.ndarray] | None:
        """(id, image, label, prediction) of the first validation case under the best weights.

        The prediction is the one the best validation made, kept then; only a service that Ray restarted
        after that validation (it has the best weights from the run folder, not the picture) predicts again.
        """
        with self._lock:
            volumes = self._validation_volumes()
            if self.state.best is None or not volumes:
                return None
            vol, pred = volumes[0], self._best_prediction
            if pred is None:
                self.validator.load_weights(self.state.best[1])
                pred = predict_volume(self.validator.model, vol.image, self.cfg, self.validator.num_classes,
                                      self.validator.device)
            return vol.item_id, np.array(vol.image), np.array(vol.label[0]), pred
