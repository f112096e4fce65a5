"""How the training loop and the launcher reach an experiment's validation service, wherever it runs.

Ray Train workers reach it as a named actor: a process of its own beside them, restarted in
place by Ray if it dies. A one-worker run in the caller's process (``training.runner``, the
default for a sweep trial) keeps it in that process instead, validating in a thread: a second
process per trial costs about 0.5 GB of private memory (torch and MONAI imported again) and
seconds of start-up, which a sweep pays once per trial. Both links offer the same typed calls;
:meth:`ValidatorLink.validate` returns a :class:`Pending` the caller polls or waits on, so the
trainer never queues behind a running validation in either place.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
import ray
import torch

from trainer.validation_service import ValidationService

Case = tuple[str, np.ndarray, np.ndarray, np.ndarray]


class Pending(Protocol):
    """A validation handed over and possibly still running."""

    def done(self) -> bool: ...

    def result(self) -> dict[str, Any]:
        """Its validation row; raises the validation's error."""
        ...


class ValidatorLink(Protocol):
    """The calls the loop and the launcher make on the validation service (timeouts: seconds or None)."""

    def validate(self, epoch: int, weights: dict[str, torch.Tensor], train_time_s: float) -> Pending: ...
    def best(self, timeout: float | None = None) -> float | None: ...
    def ratio(self) -> float: ...
    def trainer_started(self, start_epoch: int, now: float) -> None: ...
    def decide_start(self, go: bool) -> None: ...
    def may_start(self) -> bool | None: ...
    def record_train(self, row: dict[str, Any]) -> None: ...
    def train_rows(self, timeout: float | None = None) -> list[dict[str, Any]]: ...
    def history(self, timeout: float | None = None) -> list[dict[str, Any]]: ...
    def best_weights(self) -> dict[str, torch.Tensor] | None: ...
    def example_case(self) -> Case | None: ...
    def faults(self) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...


class _ActorPending:
    def __init__(self, ref: ray.ObjectRef) -> None:
        self.ref = ref

    def done(self) -> bool:
        return bool(ray.wait([self.ref], timeout=0)[0])

    def result(self) -> dict[str, Any]:
        return ray.get(self.ref)


class ActorValidator:
    """The validation actor (``ray.remote(ValidationService)``) behind typed calls; Ray errors pass through,
    so a poll with a timeout can skip a beat while the actor restarts."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def validate(self, epoch: int, weights: dict[str, torch.Tensor], train_time_s: float) -> Pending:
        return _ActorPending(self.handle.validate.remote(epoch, ray.put(weights), train_time_s))

    def best(self, timeout: float | None = None) -> float | None:
        return ray.get(self.handle.best.remote(), timeout=timeout)

    def ratio(self) -> float:
        return ray.get(self.handle.ratio.remote())

    def trainer_started(self, start_epoch: int, now: float) -> None:
        ray.get(self.handle.trainer_started.remote(start_epoch, now))

    def decide_start(self, go: bool) -> None:
        ray.get(self.handle.decide_start.remote(go))

    def may_start(self) -> bool | None:
        return ray.get(self.handle.may_start.remote())

    def record_train(self, row: dict[str, Any]) -> None:
        self.handle.record_train.remote(row)  # no wait: the actor keeps the order of one caller's calls

    def train_rows(self, timeout: float | None = None) -> list[dict[str, Any]]:
        return ray.get(self.handle.train_rows.remote(), timeout=timeout)

    def history(self, timeout: float | None = None) -> list[dict[str, Any]]:
        return ray.get(self.handle.history.remote(), timeout=timeout)

    def best_weights(self) -> dict[str, torch.Tensor] | None:
        return ray.get(self.handle.best_weights.remote())

    def example_case(self) -> Case | None:
        return ray.get(self.handle.example_case.remote())

    def faults(self) -> list[dict[str, Any]]:
        return ray.get(self.handle.faults.remote())

    def close(self) -> None:
        ray.kill(self.handle)


class LocalValidator:
    """The same service in this process: validations run one at a time in a thread of their own."""

    def __init__(self, service: ValidationService) -> None:
        self.service = service
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="validation")

    def validate(self, epoch: int, weights: dict[str, torch.Tensor], train_time_s: float) -> Pending:
        # a snapshot: training goes on in this process while these weights are validated (the actor's
        # copy is the serialisation it gets anyway)
        snapshot = {k: v.clone() for k, v in weights.items()}
        future: Future[dict[str, Any]] = self._pool.submit(self.service.validate, epoch, snapshot, train_time_s)
        return future

    def best(self, timeout: float | None = None) -> float | None:
        return self.service.best()

    def ratio(self) -> float:
        return self.service.ratio()

    def trainer_started(self, start_epoch: int, now: float) -> None:
        self.service.trainer_started(start_epoch, now)

    def decide_start(self, go: bool) -> None:
        self.service.decide_start(go)

    def may_start(self) -> bool | None:
        return self.service.may_start()

    def record_train(self, row: dict[str, Any]) -> None:
        self.service.record_train(row)

    def train_rows(self, timeout: float | None = None) -> list[dict[str, Any]]:
        return self.service.train_rows()

    def history(self, timeout: float | None = None) -> list[dict[str, Any]]:
        return self.service.history()

    def best_weights(self) -> dict[str, torch.Tensor] | None:
        return self.service.best_weights()

    def example_case(self) -> Case | None:
        return self.service.example_case()

    def faults(self) -> list[dict[str, Any]]:
        return self.service.faults()

    def close(self) -> None:
        """Drop queued validations; one already running finishes in its thread (torch cannot be interrupted)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
