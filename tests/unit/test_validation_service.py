"""The validation service outside any Ray process (an in-process run's, a test's): no Ray, and the run's picture."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.catalog import load_catalog
from common.config import config_from_dict
from common.demo_data import make_demo_data
from common.preprocess import build_preprocessor
from trainer.model import build_model
from trainer.validation import predict_volume
from trainer.validation_service import ValidationService

PROBE = """
import sys, time
import ray
from common.catalog import fingerprint, load_catalog
from common.config import config_from_dict
from common.preprocess import build_preprocessor
from trainer.model import build_model
from trainer.validation_service import ValidationService

data, state = sys.argv[1], sys.argv[2]
cfg = config_from_dict({"data": {"dataset_dir": data, "val_fraction": 0.25},
                        "validation": {"roi_size": [16, 16, 16]}, "sampler": {"patch_size": [16, 16, 16]},
                        "training": {"channels": [4, 8], "strides": [2]}})
catalog = load_catalog(data, cfg.data)
prep = build_preprocessor(catalog, cfg.preprocessing, cfg.sampler.patch_size, None, "fp")
service = ValidationService(cfg, fingerprint(catalog, cfg.preprocessing), "alone-1", catalog.num_classes, 1,
                            time.time(), state, own_volumes=(list(catalog.val), prep))
row = service.validate(0, build_model(cfg.training, 1, catalog.num_classes).state_dict(), 0.0)
print(row["epoch"], 0.0 <= row["mean_dice"] <= 1.0, service.faults(), ray.is_initialized())
"""


def test_constructing_and_validating_without_ray_starts_no_ray(tmp_path: Path) -> None:
    """Asking Ray's runtime context whether this is a restarted actor would start a local Ray (seconds, and
    processes nobody stops); without Ray it is no actor, restarted or not. A fresh interpreter: the test
    session may hold a Ray of its own."""
    data = make_demo_data(tmp_path / "data", cases=4, size=24)
    done = subprocess.run([sys.executable, "-c", PROBE, str(data), str(tmp_path / "state")], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0", "True", "[]", "False"]


def test_the_runs_picture_is_the_best_validations_own_prediction(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The end of a run draws the first validation case under the best weights: the prediction the best
    validation made, not a second sliding-window pass (seconds of a CT volume on a CPU, in every run's end);
    a restarted service, which has the best weights but not the picture, predicts again, the same."""
    data = make_demo_data(tmp_path / "data", cases=4, size=24)
    cfg = config_from_dict({"data": {"dataset_dir": str(data), "val_fraction": 0.25},
                            "validation": {"roi_size": [16, 16, 16]}, "sampler": {"patch_size": [16, 16, 16]},
                            "training": {"channels": [4, 8], "strides": [2]}})
    catalog = load_catalog(data, cfg.data)
    prep = build_preprocessor(catalog, cfg.preprocessing, cfg.sampler.patch_size, None, "fp")

    def service() -> ValidationService:
        return ValidationService(cfg, "fp", "pic-1", catalog.num_classes, 1, 0.0, str(tmp_path / "state"),
                                 own_volumes=(list(catalog.val), prep))

    first = service()
    for epoch in range(3):
        torch.manual_seed(epoch)
        first.validate(epoch, build_model(cfg.training, 1, catalog.num_classes).state_dict(), 0.0)
    best = build_model(cfg.training, 1, catalog.num_classes)
    best.load_state_dict(first.best_weights())
    item, image, _, expected = first.example_case()
    assert np.array_equal(expected, predict_volume(best, image, cfg, catalog.num_classes, torch.device("cpu")))

    restarted = service()  # reads the run's record back: best weights, no picture
    assert restarted.example_case()[3].tolist() == expected.tolist()

    def no_second_pass(*args: object) -> None:
        raise AssertionError("example_case ran a second sliding-window pass")

    monkeypatch.setattr("trainer.validation_service.predict_volume", no_second_pass)
    assert first.example_case()[0] == item
