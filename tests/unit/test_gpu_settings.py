"""Resource settings of the GPU path and multi-device validation, checked on CPU (no Ray started)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import ray
import torch

from common.config import load_config
from common.errors import ConfigError
from common.volume import PreparedVolume, class_voxel_indices
from trainer.launcher import worker_resources, check_fits_cluster, validator_resources
from trainer.model import build_model
from trainer.validation import Validator

TINY = ["training.channels=[4, 8]", "training.strides=[2]", "training.num_res_units=0",
        "sampler.patch_size=[16, 16, 16]", "validation.roi_size=[16, 16, 16]"]


def _volume(item_id: str, seed: int) -> PreparedVolume:
    rng = np.random.default_rng(seed)
    label = np.zeros((1, 20, 20, 20), np.uint8)
    label[0, 4 + seed:13, 6:15, 4:12] = 1
    image = (label.astype(np.float32) + rng.normal(0, 0.3, label.shape)).astype(np.float32)
    idx, counts = class_voxel_indices(label, 2, image.nbytes)
    return PreparedVolume(item_id, image, label, idx, counts, np.eye(4), np.eye(4), (20, 20, 20))


def test_validation_gets_gpus_only_when_training_has_them() -> None:
    cpu = load_config(None, [])
    assert validator_resources(cpu) == {"num_cpus": 0.5, "num_gpus": 0.0}
    gpu = load_config(None, ["training.use_gpu=true", "validation.num_gpus=0.25"])
    assert validator_resources(gpu)["num_gpus"] == 0.25
    split = load_config(None, ["training.use_gpu=true", "validation.num_gpus=2"])
    assert validator_resources(split)["num_gpus"] == 2.0
    assert worker_resources(gpu) == {"CPU": 1.0, "GPU": 1.0} and worker_resources(cpu) == {"CPU": 1.0}


@pytest.mark.parametrize("value", [1.5, -0.5])
def test_validation_gpus_must_be_a_share_or_whole(value: float) -> None:
    with pytest.raises(ConfigError, match="validation.num_gpus"):
        load_config(None, [f"validation.num_gpus={value}"])


def test_one_gpu_machine_is_told_how_to_share_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 1.0})
    with pytest.raises(ConfigError, match="worker_num_gpus=0.5"):
        check_fits_cluster(load_config(None, ["training.use_gpu=true", "training.num_workers=1"]))
    check_fits_cluster(load_config(None, ["training.use_gpu=true", "training.num_workers=1",
                                          "training.worker_num_gpus=0.5", "validation.num_gpus=0.5"]))
    check_fits_cluster(load_config(None, ["training.use_gpu=true", "training.num_workers=1",
                                          "validation.num_gpus=0"]))


def test_validation_split_across_devices_equals_one_device() -> None:
    cfg = load_config(None, TINY)
    torch.manual_seed(0)
    weights = build_model(cfg.training, 1, 2).state_dict()
    volumes = [_volume(f"v{k}", k) for k in range(5)]
    one = Validator(cfg, 2, 1, devices=[torch.device("cpu")]).validate(0, weights, volumes)
    two = Validator(cfg, 2, 1, devices=[torch.device("cpu")] * 2).validate(0, weights, volumes)
    strip = lambda r: dataclasses.replace(r, seconds=0.0)  # noqa: E731
    assert strip(two) == strip(one)
    assert list(two.case_dice) == [v.item_id for v in volumes]
