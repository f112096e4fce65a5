"""The validation service outside any Ray process (an in-process run's, a test's) stays outside Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from common.demo_data import make_demo_data

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
