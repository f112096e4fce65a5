"""Why a training run stopped, and which failures Ray Train must not retry.

Ray Train restarts the worker group from the last checkpoint after a worker error
(``FailureConfig.max_failures``). That is right for a killed process or a lost node, and
wrong for an error that the same input will raise again: a file that fails its checks
(:class:`DataError`), a wrong setting (:class:`ConfigError`, :class:`InvalidIdError`), a
loss that went NaN, a full disk. :class:`WorkerFailureNote` runs in Ray Train's controller;
raising from its hook ends the run at once (Ray Train treats a callback error as a
controller error, which it does not retry), with the worker's own message.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.train import UserCallback

from common.errors import ConfigError, DataError, InvalidIdError, SmartCacheError, StorageError

__all__ = ["NonFiniteLossError", "TrainingFailedError", "WorkerFailureNote", "deterministic_failure"]


class TrainingFailedError(SmartCacheError, RuntimeError):
    """Training stopped for a reason the user must see (the cause is chained)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)

    def __str__(self) -> str:
        return self.reason


class NonFiniteLossError(SmartCacheError, ArithmeticError):
    """The epoch's loss is NaN or infinite: every later step would train on garbage."""

    def __init__(self, epoch: int, loss: float, lr: float, amp: bool) -> None:
        self.epoch, self.loss, self.lr, self.amp = epoch, loss, lr, amp
        super().__init__(epoch, loss, lr, amp)

    def __str__(self) -> str:
        amp = "; or turn mixed precision off (training.amp=false)" if self.amp else ""
        return (f"the training loss became non-finite ({self.loss}) in epoch {self.epoch}; the run is stopped "
                f"rather than trained on. Lower the learning rate (training.lr={self.lr:g} now){amp}")


# the same input raises these again on every retry, so retrying only repeats the wait
NOT_RETRYABLE = (DataError, ConfigError, InvalidIdError, NonFiniteLossError, StorageError)


def _cause(err: BaseException) -> BaseException:
    """The user exception inside Ray Train's wrapper (it keeps it as ``_base_exc``), or ``err`` itself."""
    return getattr(err, "_base_exc", err)


def deterministic_failure(worker_exceptions: dict[int, BaseException]) -> BaseException | None:
    """The first worker error that a retry would raise again, if any."""
    for _, err in sorted(worker_exceptions.items()):
        cause = _cause(err)
        if isinstance(cause, NOT_RETRYABLE):
            return cause
    return None


def _first_line(err: BaseException) -> str:
    text = str(err)
    return text.splitlines()[0][:200] if text else ""


class WorkerFailureNote(UserCallback):
    """Runs in Ray Train's controller: tells the validation actor why workers failed, for the restart record,
    and ends the run without a retry when the failure would only repeat."""

    def __init__(self, validator_name: str, namespace: str) -> None:
        self.validator_name, self.namespace = validator_name, namespace

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        fatal = deterministic_failure(worker_exceptions)
        if fatal is not None:
            raise TrainingFailedError(f"not retried ({type(fatal).__name__}, the same input fails again): {fatal}")
        cause = "; ".join(f"rank {rank}: {type(_cause(err)).__name__}: {_first_line(_cause(err))}"
                          for rank, err in sorted(worker_exceptions.items()))
        try:
            ray.get_actor(self.validator_name, namespace=self.namespace).note_trainer_failure.remote(cause)
        except ValueError:  # the validation actor is gone: the restart is still recorded, without its cause
            pass
