"""The training worker's input crosses to Ray Train's workers as typed objects, not a re-parsed dict."""

import dataclasses

import pytest
from ray import cloudpickle

from cache_service.sdk import Experiment
from cache_service.sdk.batches import ConsumerSettings
from common.catalog import Record
from common.config import ExperimentConfig, load_config
from trainer.worker import INPUT_KEY, WorkerInput


def _input() -> WorkerInput:
    cfg = load_config(None, ["name=typed", "training.epochs=3", "sampler.patch_size=[32, 32, 32]",
                             "training.time_limit_s=60"])
    exp = Experiment("fp", "ns", "typed-1", ConsumerSettings(sampler=cfg.sampler), num_classes=2)
    return WorkerInput(cfg, exp, "validator-typed-1", num_classes=2, in_channels=1, t_start=12.5,
                       records=(Record("a", "/d/a.nii.gz", "/d/a_seg.nii.gz"),))


def test_worker_input_survives_rays_pickling_as_typed_objects():
    inp = _input()
    back = cloudpickle.loads(cloudpickle.dumps(inp.loop_config()))[INPUT_KEY]
    assert isinstance(back, WorkerInput) and isinstance(back.config, ExperimentConfig)
    assert back.config == inp.config and back.config.training.time_limit_s == 60.0
    assert back.experiment is not None and back.experiment.id == "typed-1"
    assert back.records == inp.records and back.preprocessor is None


def test_worker_input_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        _input().t_start = 0.0  # type: ignore[misc]


def test_loop_config_is_the_dict_ray_train_expects():
    inp = _input()
    assert inp.loop_config() == {INPUT_KEY: inp}
