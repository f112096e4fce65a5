"""Where the training loop runs (``training.runner``), what an in-process run keeps, what a trial asks Tune for."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import config_from_dict
from common.demo_data import make_demo_data
from common.errors import ConfigError
from trainer.checkpoints import newest_loadable, write_checkpoint
from trainer.sessions import LocalSession
from trainer.sweep import SweepOptions, trial_resources
from trainer.sweep_plan import make_plan


def _cfg(**training: object):
    return config_from_dict({"training": training})


@pytest.mark.parametrize(("runner", "workers", "sweep_trial", "in_process"), [
    ("auto", 1, True, True),  # a one-worker sweep trial trains in the trial's process
    ("auto", 1, False, False),  # smartcache train keeps Ray Train (worker restarts) by default
    ("auto", 2, True, False),  # DDP needs Ray Train
    ("in_process", 1, False, True),
    ("ray_train", 1, True, False),
])
def test_the_runner_decides_where_the_loop_runs(runner: str, workers: int, sweep_trial: bool,
                                                in_process: bool) -> None:
    cfg = _cfg(runner=runner, num_workers=workers)
    assert cfg.training.runs_in_process(sweep_trial) is in_process


def test_in_process_with_several_workers_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(runner="in_process", num_workers=2)
    assert "training.runner" in str(err.value) and "training.num_workers=1" in str(err.value)


def test_an_in_process_run_keeps_its_newest_two_checkpoints_where_resume_finds_them(tmp_path: Path) -> None:
    session = LocalSession(_cfg(), tmp_path)
    for epoch in range(4):
        src = tmp_path / f"tmp{epoch}"
        write_checkpoint(src, {"epoch": epoch})
        session.report({"epoch": epoch}, src)
    session.report({"epoch": 9}, None)  # a report without a checkpoint keeps nothing
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint_000002", "checkpoint_000003"]
    assert Path(newest_loadable(tmp_path).path).name == "checkpoint_000003"


def test_a_gpu_run_in_process_without_a_gpu_says_how_to_fix_it(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ConfigError, match="training.use_gpu"):
        LocalSession(_cfg(use_gpu=True), tmp_path)


def test_an_in_process_trial_asks_tune_for_its_loop_and_validation(tmp_path: Path) -> None:
    base = {"training": {"worker_num_cpus": 1.0}, "validation": {"num_cpus": 0.5}}
    trials = [{"training.num_workers": 1}, {"training.num_workers": 2}]
    data = make_demo_data(tmp_path / "data", cases=4, size=16)
    plan = make_plan("s", base, trials, ["training.num_workers"], str(data))
    opts = SweepOptions(out_dir=tmp_path, trial_num_cpus=0.1)
    assert trial_resources(plan.trial(0), opts).bundles == [{"CPU": 1.5}]
    assert trial_resources(plan.trial(1), opts).bundles == [{"CPU": 0.1}]  # Ray Train's workers ask for theirs
