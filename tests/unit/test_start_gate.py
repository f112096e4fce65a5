"""The trainers start while the cache fills and wait for the launcher's word (no Ray cluster).

The launcher waits for the fill and checks it (quarantine, patch) while Ray Train's workers start
up; they train only once it says so, and end quietly when it gives up, so the run's error is the
launcher's own and Ray Train does not restart a worker group for a run that has already failed.
"""

from __future__ import annotations

from typing import Any

import pytest
import ray

import trainer.worker as worker
from trainer.launcher import _Fill
from trainer.run_state import RunState


class Words:
    """A validation link that answers may_start from a script (None = undecided; an exception is raised)."""

    def __init__(self, *answers: Any) -> None:
        self.answers, self.asked, self.decided = list(answers), 0, []

    def may_start(self) -> bool | None:
        self.asked += 1
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def decide_start(self, go: bool) -> None:
        self.decided.append(go)


@pytest.fixture(autouse=True)
def no_wait(monkeypatch):
    monkeypatch.setattr(worker, "START_POLL_S", 0.0)


def test_a_worker_waits_until_the_launcher_decides() -> None:
    link = Words(None, None, True)
    assert worker._launcher_says_go(link) is True and link.asked == 3
    assert worker._launcher_says_go(Words(None, False)) is False


def test_a_validation_service_already_gone_means_the_run_is_over() -> None:
    assert worker._launcher_says_go(Words(None, ray.exceptions.RayActorError())) is False


def test_the_word_survives_a_restart_of_the_validation_actor(tmp_path) -> None:
    state = RunState(tmp_path)
    state.decide_start(True)
    assert RunState.load(tmp_path).start is True
    assert RunState.load(tmp_path / "other").start is None


class NotUsable:
    """An experiment whose fill wait finds nothing to train on."""

    def wait_until_ready(self, progress: bool) -> Any:
        raise RuntimeError("every training case quarantined")


def test_the_launcher_lets_them_train_or_gives_up_with_its_own_error() -> None:
    link = Words()
    _Fill(None, None, None, link, False, 0.0).wait()  # no cache (the baseline): nothing to wait for
    assert link.decided == [True]
    link = Words()
    with pytest.raises(RuntimeError, match="quarantined"):
        _Fill(object(), NotUsable(), None, link, False, 0.0).wait()  # type: ignore[arg-type]
    assert link.decided == [False]
