"""What a run must not lose when its validation actor dies: history, training rows, faults, best weights,
whether the launcher let the trainers start.

The validation actor keeps these in memory for speed and writes them to the run folder on
every change (temp file + rename, so a crash leaves the old or the new file, never half of
one). When Ray restarts the actor, it reads them back and validation goes on where it
stopped; the report and the curves show no gap but the validation that was cut short.
Rows are keyed, so an epoch that is run again after a trainer restart replaces its old row
instead of appearing twice (Ray also retries the calls in flight at a crash in any order).

The actor is threaded (a validation runs while training rows arrive), so every change and its
save happen under one lock: two unguarded saves could rename a file written from an older
state over a newer one, and a crash right after would lose a row that was acknowledged.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import torch

from common.atomic import atomic_write

__all__ = ["RunState"]

STATE_FILE = "validator.json"
BEST_FILE = "best_weights.pt"


class RunState:
    """Validation rows (one per epoch), training rows (one per epoch and rank), faults, best weights."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.val_rows: dict[int, dict[str, Any]] = {}
        self.train_rows: dict[tuple[int, int], dict[str, Any]] = {}
        self.faults: list[dict[str, Any]] = []
        self.best: tuple[float, dict[str, torch.Tensor]] | None = None
        self.start: bool | None = None  # the launcher's word: train (True), give up (False), not yet (None)
        self._lock = threading.RLock()  # one change and its save at a time: the file never goes back in time

    @classmethod
    def load(cls, folder: str | Path) -> "RunState":
        """What an earlier instance of the actor saved here (empty if nothing was)."""
        state = cls(folder)
        path = state.folder / STATE_FILE
        if path.is_file():
            saved = json.loads(path.read_text())
            state.val_rows = {int(r["epoch"]): r for r in saved["validation"]}
            state.train_rows = {(int(r["epoch"]), int(r.get("rank", 0))): r for r in saved["train"]}
            state.faults = list(saved["faults"])
            state.start = saved.get("start")
            best = state.folder / BEST_FILE
            if saved.get("best_dice") is not None and best.is_file():
                state.best = (float(saved["best_dice"]), torch.load(best, map_location="cpu", weights_only=True))
        return state

    def history(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self.val_rows[e] for e in sorted(self.val_rows)]

    def train_history(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self.train_rows[k] for k in sorted(self.train_rows)]

    def add_validation(self, row: dict[str, Any], weights: dict[str, torch.Tensor]) -> bool:
        """Keep a validation row (and its weights if they are the best so far); whether they are."""
        with self._lock:
            self.val_rows[int(row["epoch"])] = row
            improved = self.best is None or row["mean_dice"] > self.best[0]
            if improved:
                best = {k: v.detach().clone() for k, v in weights.items()}
                atomic_write(self.folder / BEST_FILE, lambda fh: torch.save(best, fh), "wb")
                self.best = (float(row["mean_dice"]), best)
            self._save()
            return improved

    def add_train(self, row: dict[str, Any]) -> None:
        with self._lock:
            self.train_rows[(int(row["epoch"]), int(row.get("rank", 0)))] = dict(row)
            self._save()

    def add_fault(self, fault: dict[str, Any]) -> None:
        with self._lock:
            self.faults.append(dict(fault))
            self._save()

    def decide_start(self, go: bool) -> None:
        with self._lock:
            self.start = go
            self._save()

    def _save(self) -> None:
        """Write the whole record; the caller holds the lock."""
        body = {"validation": self.history(), "train": self.train_history(), "faults": self.faults,
                "best_dice": None if self.best is None else self.best[0], "start": self.start}
        atomic_write(self.folder / STATE_FILE, lambda fh: json.dump(body, fh), "w")
