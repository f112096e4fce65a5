"""Which worker failures Ray Train may retry, and what a non-finite loss says."""

import pytest
from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

from common.errors import ConfigError, DataError, StorageError
from trainer import failures
from trainer.failures import NonFiniteLossError, TrainingFailedError, WorkerFailureNote, deterministic_failure


def _wrapped(err: BaseException) -> UserExceptionWithTraceback:
    """What Ray Train's controller receives from a worker: the user error inside its own wrapper."""
    return UserExceptionWithTraceback(err, f"Traceback (most recent call last):\n  ...\n{err!r}")


def test_deterministic_errors_are_found_inside_ray_trains_wrapper():
    data = DataError("/data/case_03.nii.gz", "image has NaN or infinite voxels")
    assert deterministic_failure({1: _wrapped(RuntimeError("gloo")), 0: _wrapped(data)}) is data
    assert isinstance(deterministic_failure({0: _wrapped(ConfigError("training.lr", 0, "> 0"))}), ConfigError)
    assert isinstance(deterministic_failure({0: _wrapped(StorageError("/runs", "full"))}), StorageError)
    assert deterministic_failure({0: _wrapped(RuntimeError("worker died")), 1: ConnectionError("x")}) is None


def test_a_data_error_ends_the_run_without_a_retry():
    note = WorkerFailureNote("validator-x", "ns")
    err = DataError("/data/case_03.nii.gz", "label values {7} outside the declared classes 0..1")
    with pytest.raises(TrainingFailedError, match="not retried \\(DataError.*case_03.nii.gz: label values"):
        note.after_exception(None, {0: _wrapped(err)})


def test_a_transient_error_is_noted_for_the_restart_and_left_to_ray_train(monkeypatch):
    noted = []

    class Validator:
        class note_trainer_failure:  # noqa: N801 - stands in for an actor method
            @staticmethod
            def remote(cause: str) -> None:
                noted.append(cause)

    monkeypatch.setattr(failures.ray, "get_actor", lambda name, namespace: Validator)
    WorkerFailureNote("validator-x", "ns").after_exception(None, {0: _wrapped(RuntimeError("node lost"))})
    assert noted == ["rank 0: RuntimeError: node lost"]


def test_non_finite_loss_names_the_epoch_and_the_fixes():
    text = str(NonFiniteLossError(4, float("nan"), 0.5, True))
    assert "non-finite (nan) in epoch 4" in text and "training.lr=0.5" in text and "training.amp=false" in text
    assert "training.amp" not in str(NonFiniteLossError(0, float("inf"), 1e-3, False))
