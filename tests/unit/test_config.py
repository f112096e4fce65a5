from pathlib import Path

import pytest

from common.config import ExperimentConfig, config_from_dict, load_config, parse_bytes
from common.errors import ConfigError


def test_defaults_follow_the_paper():
    cfg = ExperimentConfig()
    assert cfg.preprocessing.spacing == (1.0, 1.0, 1.0)
    assert cfg.preprocessing.orientation == "RAS"
    assert cfg.sampler.patch_size == (112, 112, 112)
    assert cfg.sampler.gamma == 1.0 and cfg.sampler.initial_ratio == 1.0
    assert cfg.training.optimizer == "novograd" and cfg.training.lr == 1e-2  # NovoGrad's own default lr


def test_yaml_and_overrides(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("name: spleen\nsampler:\n  patch_size: [64, 64, 64]\ncache:\n  byte_budget: 2GiB\n")
    cfg = load_config(path, ["training.lr=1e-3", "sampler.ratio_bounds=[0.5, 4]", "data.val_ids=[a, b]"])
    assert cfg.name == "spleen"
    assert cfg.sampler.patch_size == (64, 64, 64)
    assert cfg.cache.byte_budget == 2 * 2**30
    assert cfg.training.lr == 1e-3
    assert cfg.sampler.ratio_bounds == (0.5, 4.0)
    assert cfg.data.val_ids == ("a", "b")


@pytest.mark.parametrize("override, field, words", [
    ("training.lr=-1", "training.lr", "> 0"),
    ("training.optimizer=adagrad", "training.optimizer", "novograd"),
    ("sampler.patch_size=[64, 64]", "sampler.patch_size", "exactly 3"),
    ("sampler.formula=fancy", "sampler.formula", "stable or plain"),
    ("sampler.initial_ratio=50", "sampler.initial_ratio", "ratio_bounds"),
    ("cache.replace_rate=1.5", "cache.replace_rate", "[0, 1]"),
    ("cache.byte_budget=lots", "cache.byte_budget", "2GiB"),
    ("training.amp=maybe", "training.amp", "true or false"),
    ("training.colour=red", "training.colour", "unknown key"),
    ("augmentation.flip_prob=2", "augmentation.flip_prob", "probability"),
    ("validation.overlap=1.0", "validation.overlap", "[0, 1)"),
    ("preprocessing.normalization=zscore", "preprocessing.normalization", "auto, ct, mri, none"),
    ("training.loss=focal", "training.loss", "dice_ce"),
    ("training.weight_decay=-0.1", "training.weight_decay", ">= 0"),
    ("training.loader_workers=-1", "training.loader_workers", ">= 0"),
])
def test_wrong_value_names_field_value_and_allowed(override, field, words):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert info.value.field == field
    assert field in str(info.value) and words in str(info.value)


def test_bad_override_syntax_and_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["training.lr"])
    with pytest.raises(ConfigError, match="existing YAML file"):
        load_config(tmp_path / "nope.yaml")


def test_parse_bytes():
    assert parse_bytes("512MB") == 512 * 10**6
    assert parse_bytes("1 GiB") == 2**30
    assert parse_bytes(1000) == 1000


def test_pool_size_respects_rate_and_num():
    cfg = load_config(None, ["cache.cache_rate=0.5"]).cache
    assert cfg.pool_size(10) == 5
    cfg = load_config(None, ["cache.cache_num=3"]).cache
    assert cfg.pool_size(10) == 3 and cfg.pool_size(2) == 2


def test_config_error_survives_pickling():
    import pickle
    err = pickle.loads(pickle.dumps(ConfigError("a.b", 3, "an integer")))
    assert isinstance(err, ConfigError) and err.field == "a.b" and "a.b" in str(err)


def test_loss_weight_decay_and_loader_workers_load_from_overrides():
    cfg = load_config(None, ["training.loss=dice_ce", "training.weight_decay=1e-5", "training.loader_workers=0"])
    assert (cfg.training.loss, cfg.training.weight_decay, cfg.training.loader_workers) == ("dice_ce", 1e-5, 0)
    assert ExperimentConfig().training.loss == "dice_ce"  # Eq. 1 + CE: see docs/benchmarks.md, "NovoGrad"


def test_lr_defaults_per_optimiser_unless_given():
    assert load_config(None, ["training.optimizer=adam"]).training.lr == 1e-3
    assert load_config(None, ["training.optimizer=novograd"]).training.lr == 1e-2
    assert load_config(None, ["training.optimizer=adam", "training.lr=3e-4"]).training.lr == 3e-4
    cfg = load_config(None, ["training.optimizer=sgd", "training.lr=null"])
    assert cfg.training.lr == 1e-2 and config_from_dict(cfg.to_dict()).training.lr == 1e-2
