"""`smartcache train` without --config plans first and trains with the plan; --set still wins (no Ray)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from test_plan_rules import CPU_NODE, isotropic_ct

from common.config import ExperimentConfig
from common.planning.plan import make_plan
from trainer import commands, plan_command
from trainer.cli import build_parser


def test_train_without_config_writes_the_plan_and_trains_with_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    plan = make_plan(isotropic_ct(), CPU_NODE)
    seen: dict[str, object] = {}
    monkeypatch.setattr(plan_command, "plan_run", lambda data, overrides: plan)
    monkeypatch.setattr(commands, "init_ray", lambda address, num_cpus: None)

    def fake_train(args: argparse.Namespace, cfg: ExperimentConfig) -> int:
        seen["cfg"] = cfg
        return 0

    monkeypatch.setattr(commands, "_train", fake_train)
    args = build_parser().parse_args(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                                      "--set", "training.batch_size=3"])
    assert args.handler(args) == 0
    cfg = seen["cfg"]
    assert isinstance(cfg, ExperimentConfig)
    assert list(cfg.sampler.patch_size) == plan.value("sampler.patch_size")
    assert list(cfg.preprocessing.spacing) == plan.value("preprocessing.spacing")
    assert cfg.training.batch_size == 3  # the override beats the plan
    assert cfg.data.dataset_dir == str(tmp_path)
    assert (tmp_path / "run" / plan_command.PLAN_FILE).read_text() == plan.to_yaml()
    assert "preprocessing.spacing" in capsys.readouterr().out
