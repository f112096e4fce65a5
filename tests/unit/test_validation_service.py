"""The validation service outside any Ray process (an in-process run's, a test's) stays outside Ray."""

from __future__ import annotations

import time
from pathlib import Path

import ray

from common.catalog import fingerprint, load_catalog
from common.config import config_from_dict
from common.demo_data import make_demo_data
from common.preprocess import build_preprocessor
from trainer.model import build_model
from trainer.validation_service import ValidationService


def test_constructing_and_validating_without_ray_starts_no_ray(tmp_path: Path) -> None:
    """Asking Ray's runtime context whether this is a restarted actor would start a local Ray (seconds, and
    processes nobody stops); without Ray it is no actor, restarted or not."""
    assert not ray.is_initialized()
    data = make_demo_data(tmp_path / "data", cases=4, size=24)
    cfg = config_from_dict({"data": {"dataset_dir": str(data), "val_fraction": 0.25},
                            "validation": {"roi_size": [16, 16, 16]}, "sampler": {"patch_size": [16, 16, 16]},
                            "training": {"channels": [4, 8], "strides": [2]}})
    catalog = load_catalog(data, cfg.data)
    prep = build_preprocessor(catalog, cfg.preprocessing, cfg.sampler.patch_size, None, "fp")
    service = ValidationService(cfg, fingerprint(catalog, cfg.preprocessing), "alone-1", catalog.num_classes, 1,
                                time.time(), str(tmp_path / "state"), own_volumes=(list(catalog.val), prep))
    row = service.validate(0, build_model(cfg.training, 1, catalog.num_classes).state_dict(), 0.0)
    assert row["epoch"] == 0 and 0.0 <= row["mean_dice"] <= 1.0
    assert service.faults() == [] and not ray.is_initialized()
