"""The validation actor: one per experiment, beside the trainers, never in their way.

A thin shell around :class:`trainer.validation.Validator`: it reads the validation
volumes from the shared cache once (whole volumes, deterministic prefix only; without a
cache it prepares them itself, once, with the same preprocessor), runs when
rank 0 hands it weights, keeps the best weights for the final picture, and publishes
Dice, r_FP, r_FN and the next ratio to the cache registry, where the trainers pick the
ratio up at their next epoch (without a cache, from :meth:`ratio`). Run as a threaded
actor so ``best()`` answers while a validation is in progress.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import ray
import torch

from cache_service.client import attach, call
from common.catalog import Record
from common.config import config_from_dict
from common.preprocess import Preprocessor
from common.volume import PreparedVolume
from trainer.validation import ValidationResult, Validator, predict_volume


class ValidationService:
    def __init__(self, experiment: dict[str, Any], fingerprint: str, experiment_id: str, num_classes: int,
                 in_channels: int, t_start: float,
                 own_volumes: tuple[list[Record], Preprocessor] | None = None) -> None:
        self.cfg = config_from_dict(experiment)
        self.experiment_id, self.t_start = experiment_id, t_start
        self.own_volumes = own_volumes  # (validation records, preprocessor) when there is no cache
        self.cache = attach(fingerprint, self.cfg.cache.namespace) if own_volumes is None else None
        self.validator = Validator(self.cfg, num_classes, in_channels, publish=self._publish)
        self._lock = threading.Lock()
        self._rows: list[dict[str, Any]] = []
        self._train_rows: list[dict[str, Any]] = []
        self._best: tuple[float, dict[str, torch.Tensor]] | None = None
        self._volumes: list[PreparedVolume] | None = None
        self._val_refs: tuple[Any, ...] = ()

    def _validation_volumes(self) -> list[PreparedVolume]:
        if self._volumes is None and self.own_volumes is not None:
            records, preprocessor = self.own_volumes
            self._volumes = [preprocessor(r) for r in records]
        if self._volumes is None:
            snap = call(self.cache, "val_snapshot")
            self._val_refs = snap.refs  # holding the refs keeps the volumes readable
            self._volumes = [ray.get(r) for r in snap.refs]
        return self._volumes

    def _publish(self, result: ValidationResult) -> None:
        if self.cache is not None:
            call(self.cache, "publish_sampler", self.experiment_id, result.ratio, result.r_fp, result.r_fn,
                 list(result.dice_per_class), result.mean_dice, result.epoch)

    def ratio(self) -> float:
        """The latest pos/neg ratio, for trainers when there is no cache registry to hold it."""
        return float(self.validator.ratio)

    def validate(self, epoch: int, weights: dict[str, torch.Tensor], train_time_s: float) -> dict[str, Any]:
        with self._lock:  # one validation at a time; best() stays answerable
            result = self.validator.validate(epoch, weights, self._validation_volumes())
            row = {**result.to_dict(), "time_s": time.time() - self.t_start, "train_time_s": train_time_s}
            self._rows.append(row)
            if self._best is None or result.mean_dice > self._best[0]:
                self._best = (result.mean_dice, {k: v.clone() for k, v in weights.items()})
            return row

    def record_train(self, row: dict[str, Any]) -> None:
        """Rank 0's per-epoch training metrics, kept here so the launcher finds them in one place."""
        self._train_rows.append(dict(row))

    def train_rows(self) -> list[dict[str, Any]]:
        return list(self._train_rows)

    def best(self) -> float | None:
        return None if self._best is None else self._best[0]

    def history(self) -> list[dict[str, Any]]:
        return list(self._rows)

    def best_weights(self) -> dict[str, torch.Tensor] | None:
        return None if self._best is None else self._best[1]

    def example_case(self) -> tuple[str, np.ndarray, np.ndarray, np.ndarray] | None:
        """(id, image, label, prediction) of the first validation case under the best weights."""
        with self._lock:
            volumes = self._validation_volumes()
            if self._best is None or not volumes:
                return None
            self.validator.load_weights(self._best[1])
            vol = volumes[0]
            pred = predict_volume(self.validator.model, vol.image, self.cfg, self.validator.num_classes,
                                  self.validator.device)
            return vol.item_id, np.array(vol.image), np.array(vol.label[0]), pred
