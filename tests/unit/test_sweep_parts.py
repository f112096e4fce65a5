"""The pure parts of ``smartcache sweep``: the space syntax, drawing trials, the plan's caches, the results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ray.tune.search.sample import Categorical, Float

from common.config import load_config
from common.demo_data import make_demo_data
from common.errors import ConfigError
from trainer.search_space import apply_values, draw_trials, load_space, parse_space, parse_value, searched_keys
from trainer.sweep_plan import format_plan, make_plan
from trainer.sweep_results import TrialOutcome, best_trial, results_table, write_results


@pytest.fixture(scope="module")
def demo_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("sweep"), cases=4, size=16)


def test_space_lines_become_tune_domains() -> None:
    lr = parse_value("training.lr", "loguniform(1e-4, 1e-2)")
    assert lr.kind == "loguniform" and lr.args == (1e-4, 1e-2)  # YAML's "1e-4" string read as a number
    domain = lr.domain()
    assert isinstance(domain, Float) and (domain.lower, domain.upper) == (1e-4, 1e-2)
    opt = parse_value("training.optimizer", "choice([adam, novograd])").domain()
    assert isinstance(opt, Categorical) and opt.categories == ["adam", "novograd"]
    patch = parse_value("sampler.patch_size", "choice([[32,32,32],[48,48,48]])")
    assert patch.args == ([[32, 32, 32], [48, 48, 48]],)
    assert parse_value("training.seed", "grid([0, 1])").domain() == {"grid_search": [0, 1]}
    assert parse_value("training.epochs", 8).kind == "fixed"


@pytest.mark.parametrize("text, words", [
    ("loguniform(0, 1)", "above 0"),
    ("uniform(2, 1)", "low < high"),
    ("uniform(a, b)", "numbers"),
    ("choice(adam)", "non-empty list"),
    ("choice([])", "non-empty list"),
    ("loguniform(1e-4)", "2 argument"),
    ("lognormal(1, 2)", "one of uniform"),
])
def test_bad_space_lines_name_the_key_and_the_fix(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_value("training.lr", text)
    assert "space.training.lr" in str(err.value) and words in str(err.value)


def test_space_file_nested_sections_and_nothing_searched(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text("training:\n  lr: choice([1e-3, 1e-2])\nsampler.gamma: uniform(0.5, 2.0)\ntraining.epochs: 4\n")
    space = load_space(path)
    assert searched_keys(space) == ["training.lr", "sampler.gamma"]
    with pytest.raises(ConfigError, match="at least one searched key"):
        parse_space({"training.epochs": 4})
    with pytest.raises(ConfigError, match="section.key"):
        parse_space({"lr": "choice([1, 2])"})


def test_draw_trials_runs_every_grid_value_per_sample_and_is_seeded() -> None:
    space = parse_space({"training.seed": "grid([0, 1, 2])", "training.lr": "loguniform(1e-4, 1e-2)",
                         "training.epochs": 5})
    trials = draw_trials(space, 2, seed=3)
    assert [t["training.seed"] for t in trials] == [0, 1, 2, 0, 1, 2]
    assert all(1e-4 <= t["training.lr"] <= 1e-2 and t["training.epochs"] == 5 for t in trials)
    assert len({t["training.lr"] for t in trials}) == 6
    assert draw_trials(space, 2, seed=3) == trials
    assert draw_trials(space, 2, seed=4) != trials
    with pytest.raises(ConfigError, match="--trials"):
        draw_trials(space, 0)


def test_apply_values_leaves_the_base_alone() -> None:
    base = {"training": {"lr": 1.0, "epochs": 3}}
    raw = apply_values(base, {"training.lr": 0.1, "sampler.gamma": 2.0})
    assert raw == {"training": {"lr": 0.1, "epochs": 3}, "sampler": {"gamma": 2.0}}
    assert base == {"training": {"lr": 1.0, "epochs": 3}}


def _plan(demo: Path, space: dict, trials: int = 1):
    parsed = parse_space(space)
    base = load_config(None, ["sampler.patch_size=[16, 16, 16]", "validation.roi_size=[32, 32, 32]"]).to_dict()
    return make_plan("sw", base, draw_trials(parsed, trials), searched_keys(parsed), str(demo))


def test_plan_groups_trials_by_preprocessing(demo_dataset: Path) -> None:
    same = _plan(demo_dataset, {"training.lr": "grid([1e-3, 1e-2])", "training.optimizer": "grid([adam, sgd])"})
    assert len(same.trials) == 4 and len(same.caches()) == 1
    assert [t.config.training.optimizer for t in same.trials] == ["adam", "sgd", "adam", "sgd"]
    assert "4 trials on 1 cache(s)" in format_plan(same)
    split = _plan(demo_dataset, {"preprocessing.spacing": "grid([[1.5, 1.5, 1.5], [2, 2, 2]])",
                                 "training.lr": "grid([1e-3, 1e-2])"})
    groups = split.caches()
    assert len(groups) == 2 and sorted(len(g) for g in groups.values()) == [2, 2]
    text = format_plan(split)
    assert "2 cache(s)" in text and "preprocessing.spacing is searched" in text


def test_a_bad_trial_value_fails_in_the_plan(demo_dataset: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _plan(demo_dataset, {"training.optimizer": "choice([adagrad])"})
    assert "training.optimizer" in str(err.value) and "sw-t0" in str(err.value)


def _outcome(i: int, dices: list[float], state: str, values: dict) -> TrialOutcome:
    o = TrialOutcome(i, f"sw-t{i}", values, "abcdef0123456789", state=state, epochs=2 * len(dices))
    o.history = [{"epoch": 2 * k, "dice": d, "time_s": 10.0 * (k + 1)} for k, d in enumerate(dices)]
    return o


def test_results_table_plot_and_best_config(demo_dataset: Path, tmp_path: Path) -> None:
    plan = _plan(demo_dataset, {"training.lr": "grid([1e-2, 3e-3, 1e-6])"})
    outcomes = [_outcome(0, [0.2, 0.6, 0.7], "done", plan.trials[0].values),
                _outcome(1, [0.3, 0.75], "done", plan.trials[1].values),
                _outcome(2, [0.01], "stopped", plan.trials[2].values)]
    assert best_trial(outcomes).index == 1
    table = results_table(plan, outcomes, target=0.6)
    lines = table.splitlines()
    assert len(lines) == 5 and "training.lr" in lines[0] and "stopped early" in lines[0]
    assert "| 0 | 0.01 |" in lines[2] and "| 0.700 | 20 | 6 | no | done |" in lines[2]
    assert "| 1e-06 |" in lines[4] and "| - | 2 | yes | stopped |" in lines[4]
    write_results(tmp_path, plan, outcomes, target=0.6)
    assert (tmp_path / "dice.png").stat().st_size > 1000
    best = load_config(tmp_path / "best.yaml")
    assert best.training.lr == pytest.approx(3e-3) and best.name == "sw-t1"
    assert best.sampler.patch_size == (16, 16, 16)
    assert "best Dice 0.750" in (tmp_path / "best.yaml").read_text()
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [(r["best_dice"], r["time_to_target_s"], r["state"]) for r in rows] == [
        (0.7, 20.0, "done"), (0.75, 20.0, "done"), (0.01, None, "stopped")]


def test_no_validation_means_no_best_config(demo_dataset: Path, tmp_path: Path) -> None:
    plan = _plan(demo_dataset, {"training.lr": "grid([1e-2])"})
    write_results(tmp_path, plan, [TrialOutcome(0, "sw-t0", plan.trials[0].values, "ab", state="error")], 0.5)
    assert best_trial([]) is None and not (tmp_path / "best.yaml").exists()
    assert "| error |" in (tmp_path / "results.md").read_text()


def test_validations_per_trial_and_asha_bounds(demo_dataset: Path) -> None:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from trainer.sweep import SweepOptions, make_scheduler, validations_of

    plan = _plan(demo_dataset, {"training.lr": "grid([1e-2, 1e-3])", "training.epochs": 8,
                                "validation.interval": 2})
    assert validations_of(plan.trials[0]) == 5  # epochs 0, 2, 4, 6 and the last, 7
    assert isinstance(make_scheduler(plan, SweepOptions(Path("o"), grace_period=2)), ASHAScheduler)
    assert isinstance(make_scheduler(plan, SweepOptions(Path("o"), scheduler="fifo")), FIFOScheduler)
    with pytest.raises(ConfigError, match="--grace-period"):
        make_scheduler(plan, SweepOptions(Path("o"), grace_period=5))


def test_fill_caches_starts_none_for_a_no_cache_sweep(demo_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The baseline sweep (cache.enabled=false) must not start a cache that no trial reads."""
    from trainer import sweep

    started: list[str] = []

    class Recorder:
        @staticmethod
        def from_config(cfg, wait: bool = False):  # noqa: ANN001, ANN205 -- a stand-in for SmartCache
            started.append(cfg.name)
            raise RuntimeError("no Ray here")

    monkeypatch.setattr(sweep, "SmartCache", Recorder)
    off = _plan(demo_dataset, {"training.lr": "grid([1e-2, 1e-3])", "cache.enabled": False})
    sweep.fill_caches(off, show=False)
    assert started == []
    on = _plan(demo_dataset, {"training.lr": "grid([1e-2, 1e-3])"})
    with pytest.raises(RuntimeError, match="no Ray here"):
        sweep.fill_caches(on, show=False)
    assert started == ["sw-t0"]


def test_sweep_cli_refuses_a_bad_space_before_starting_ray(demo_dataset: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.cli import main

    space = tmp_path / "space.yaml"
    space.write_text("training.lr: loguniform(0, 1)\n")
    assert main(["sweep", "--data", str(demo_dataset), "--space", str(space)]) == 2
    assert "space.training.lr" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    assert "--concurrent" in capsys.readouterr().out



def _budget_plan(demo: Path, space: dict, sets: list[str]):
    parsed = parse_space(space)
    base = load_config(None, ["sampler.patch_size=[16, 16, 16]", "validation.roi_size=[32, 32, 32]",
                              "training.worker_num_cpus=1", "validation.num_cpus=0.5", *sets]).to_dict()
    return make_plan("sw", base, draw_trials(parsed, 1), searched_keys(parsed), str(demo))


def test_a_sweep_whose_trials_leave_no_room_for_the_rotation_says_so(demo_dataset: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.sweep import SweepOptions, held_cpus, rotation_room

    plan = _budget_plan(demo_dataset, {"training.lr": "grid([1e-2, 1e-3])"}, ["cache.task_num_cpus=0.125"])
    opts = SweepOptions(Path("o"), concurrent=2)
    assert held_cpus(plan.trial(0), opts) == 1.5  # in process: its loop and its validation
    assert rotation_room(plan, opts, cluster_cpus=4) == 6  # 2 x 1.5 + the cache actor's 0.25 leave 0.75
    assert "warning" not in capsys.readouterr().out
    assert rotation_room(plan, opts, cluster_cpus=3.25) == 0
    out = capsys.readouterr().out
    assert "will not rotate" in out and "--concurrent" in out and "cache.task_num_cpus" in out
    searched = _budget_plan(demo_dataset, {"preprocessing.spacing": "grid([[1, 1, 1], [2, 2, 2]])"},
                            ["cache.task_num_cpus=0.125"])
    assert rotation_room(searched, opts, cluster_cpus=4) == 4  # two caches, two actors of 0.25
    ray_train = _budget_plan(demo_dataset, {"training.lr": "grid([1e-2, 1e-3])"}, ["training.num_workers=2"])
    assert held_cpus(ray_train.trial(0), SweepOptions(Path("o"), trial_num_cpus=0.1)) == pytest.approx(2.6)
    off = _budget_plan(demo_dataset, {"training.lr": "grid([1e-2, 1e-3])"}, ["cache.enabled=false"])
    assert rotation_room(off, opts, cluster_cpus=1) == 0 and capsys.readouterr().out == ""  # no cache, no pool
