import pickle
from pathlib import Path

import pytest
from pydantic import ValidationError

from common.config import (CacheConfig, CacheSideConfig, ExperimentConfig, SamplerConfig, TrainingConfig,
                           config_from_dict, load_config, parse_bytes)
from common.errors import ConfigError, UnknownConfigKeyError

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = sorted((ROOT / "trainer" / "configs").glob("*.yaml")) + sorted((ROOT / "deploy" / "configs").glob("*.yaml"))


def _error(*overrides: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(None, list(overrides))
    return info.value


def test_defaults_follow_the_paper():
    cfg = ExperimentConfig()
    assert cfg.preprocessing.spacing == (1.0, 1.0, 1.0)
    assert cfg.preprocessing.orientation == "RAS"
    assert cfg.sampler.patch_size == (112, 112, 112)
    assert cfg.sampler.gamma == 1.0 and cfg.sampler.initial_ratio == 1.0
    assert cfg.training.optimizer == "novograd" and cfg.training.lr == 1e-2  # NovoGrad's own default lr
    assert cfg.cache.byte_budget == 8 * 2**30 and cfg.cache.disk_budget == 20 * 2**30
    assert cfg.sampler.gpu_cache_bytes == 8 * 2**30 and cfg.cache.disk_dir == "auto"


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


def test_an_override_beats_the_file(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("training:\n  epochs: 7\n  optimizer: adam\n")
    cfg = load_config(path, ["training.epochs=3", "name=from-cli"])
    assert (cfg.training.epochs, cfg.training.optimizer, cfg.name) == (3, "adam", "from-cli")


@pytest.mark.parametrize("override, field, words", [
    ("training.lr=-1", "training.lr", "> 0"),
    ("training.optimizer=adagrad", "training.optimizer", "one of novograd, adam, sgd"),
    ("sampler.patch_size=[64, 64]", "sampler.patch_size", "exactly 3"),
    ("sampler.patch_size=[64, 0, 64]", "sampler.patch_size", "three positive integers"),
    ("sampler.formula=fancy", "sampler.formula", "stable or plain"),
    ("sampler.initial_ratio=50", "sampler.initial_ratio", "ratio_bounds"),
    ("cache.replace_rate=1.5", "cache.replace_rate", "[0, 1]"),
    ("cache.byte_budget=lots", "cache.byte_budget", "2GiB"),
    ("training.amp=maybe", "training.amp", "true or false"),
    ("augmentation.flip_prob=2", "augmentation.flip_prob", "probability"),
    ("validation.overlap=1.0", "validation.overlap", "[0, 1)"),
    ("preprocessing.normalization=zscore", "preprocessing.normalization", "one of auto, ct, mri, none"),
    ("preprocessing.orientation=RAX", "preprocessing.orientation", "axis codes"),
    ("training.loss=focal", "training.loss", "dice_ce"),
    ("training.weight_decay=-0.1", "training.weight_decay", ">= 0"),
    ("training.loader_workers=-1", "training.loader_workers", ">= 0"),
    ("training.strides=[2, 2]", "training.strides", "one stride fewer than channels"),
    ("sampler.patch_size=[60, 64, 64]", "sampler.patch_size", "divisible by 16"),
    ("training.worker_num_gpus=-2", "training.worker_num_gpus", "GPU share"),
])
def test_wrong_value_names_field_value_and_allowed(override, field, words):
    err = _error(override)
    assert err.field == field
    assert f"config field '{field}' = " in str(err) and words in str(err)


def test_message_reads_as_today():
    assert str(_error("training.optimizer=adagrad")) == \
        "config field 'training.optimizer' = 'adagrad' is invalid: one of novograd, adam, sgd"


@pytest.mark.parametrize("override, field, expected", [
    ("training.epochs=3.5", "training.epochs", "an integer"),
    ("training.epochs=true", "training.epochs", "an integer"),
    ("training.lr=true", "training.lr", "a number"),
    ("training.lr=fast", "training.lr", "a number"),
    ("preprocessing.orientation=3", "preprocessing.orientation", "a string"),
    ("sampler.patch_size=96", "sampler.patch_size", "a list"),
    ("data.val_ids=[1, 2]", "data.val_ids[0]", "a string"),
    ("training.amp=1", "training.amp", "true or false"),
])
def test_wrong_type_names_field_and_expected_type(override, field, expected):
    err = _error(override)
    assert err.field == field and expected in str(err)
    assert "Input should" not in str(err) and "pydantic" not in str(err)  # none of pydantic's own text


def test_a_section_that_is_not_a_mapping(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("training: 3\n")
    with pytest.raises(ConfigError, match="config field 'training' = 3 is invalid: a mapping of key: value"):
        load_config(path)


@pytest.mark.parametrize("override, message", [
    ("training.lr_rate=1e-3", "config field 'training.lr_rate' is unknown: did you mean 'training.lr'?"),
    ("sampler.patch_sise=[64, 64, 64]", "config field 'sampler.patch_sise' is unknown: did you mean "
                                        "'sampler.patch_size'?"),
    ("trainig.lr=1e-3", "config field 'trainig' is unknown: did you mean 'training'?"),
])
def test_unknown_key_suggests_the_nearest(override, message):
    err = _error(override)
    assert isinstance(err, UnknownConfigKeyError) and str(err) == message


def test_unknown_key_without_a_near_one_lists_the_keys():
    err = _error("training.colour=red")
    assert err.field == "training.colour"
    assert str(err).startswith("config field 'training.colour' is unknown: known keys here: batch_size, lr,")


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "nan", "inf", "1e400"])
def test_non_finite_lr_is_refused(value):
    err = _error(f"training.lr={value}")
    assert err.field == "training.lr" and "finite number" in str(err)


def test_non_finite_anywhere_is_refused():
    assert _error("cache.idle_timeout_s=.inf").field == "cache.idle_timeout_s"
    assert _error("sampler.ratio_bounds=[0.1, .inf]").field == "sampler.ratio_bounds[1]"


@pytest.mark.parametrize("value", ["lots", "1.2.3GiB", "5 parsecs", "true", "0", "-1GiB"])
def test_bad_byte_size_is_refused(value):
    err = _error(f"cache.byte_budget={value}")
    assert err.field == "cache.byte_budget" and ("byte count" in str(err))


def test_byte_sizes():
    assert parse_bytes("512MB") == 512 * 10**6
    assert parse_bytes("1 GiB") == 2**30
    assert parse_bytes("1.5GiB") == 3 * 2**29
    assert parse_bytes(1000) == 1000
    assert load_config(None, ["sampler.gpu_cache_bytes=0"]).sampler.gpu_cache_bytes == 0
    assert CacheConfig(disk_budget="64 kB").disk_budget == 64_000


def test_yaml_that_is_not_utf8_names_the_file(tmp_path: Path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.field == "--config" and str(path) in str(info.value) and "UTF-8" in str(info.value)


def test_unparsable_yaml_names_the_file(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("training: [1, 2\n")
    with pytest.raises(ConfigError, match="valid YAML") as info:
        load_config(path)
    assert str(path) in str(info.value)
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="a YAML mapping of sections"):
        load_config(path)


def test_bad_override_syntax_and_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["training.lr"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["training.lr.x=1"])
    with pytest.raises(ConfigError, match="existing YAML file"):
        load_config(tmp_path / "nope.yaml")


def test_sections_are_frozen_and_hashable():
    cfg = ExperimentConfig()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.training.lr = 1.0  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        cfg.name = "other"  # type: ignore[misc]
    assert hash(cfg.sampler) == hash(SamplerConfig())


def test_a_section_built_in_code_fails_with_its_dotted_field():
    with pytest.raises(ConfigError, match="config field 'cache.byte_budget' = 0 is invalid: a positive byte count"):
        CacheConfig(byte_budget=0)
    with pytest.raises(UnknownConfigKeyError, match="did you mean 'sampler.patch_size'"):
        SamplerConfig(patch=(8, 8, 8))
    with pytest.raises(ConfigError, match="'sampler.initial_ratio' = 20.0"):
        SamplerConfig(initial_ratio=20.0)


def test_replace_validates_again():
    sampler = SamplerConfig()
    assert sampler.replace(patch_size=(8, 8, 8)).patch_size == (8, 8, 8)
    assert sampler.patch_size == (112, 112, 112)
    with pytest.raises(ConfigError, match="sampler.samples_per_volume"):
        sampler.replace(samples_per_volume=0)
    cfg = ExperimentConfig()
    with pytest.raises(ConfigError, match="augmentation.affine_prob"):
        cfg.replace(sampler=cfg.sampler.replace(device="cuda"), augmentation=cfg.augmentation.replace(affine_prob=0.5))


def test_pool_size_respects_rate_and_num():
    cfg = load_config(None, ["cache.cache_rate=0.5"]).cache
    assert cfg.pool_size(10) == 5
    cfg = load_config(None, ["cache.cache_num=3"]).cache
    assert cfg.pool_size(10) == 3 and cfg.pool_size(2) == 2


def test_config_errors_survive_pickling():
    err = pickle.loads(pickle.dumps(ConfigError("a.b", 3, "an integer")))
    assert isinstance(err, ConfigError) and err.field == "a.b" and "a.b" in str(err)
    unknown = pickle.loads(pickle.dumps(UnknownConfigKeyError("training.lr_rate", "did you mean 'training.lr'?")))
    assert str(unknown) == "config field 'training.lr_rate' is unknown: did you mean 'training.lr'?"


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
    assert TrainingConfig(optimizer="adam").lr == 1e-3


def test_time_limit_is_optional_and_positive():
    assert ExperimentConfig().training.time_limit_s is None
    assert load_config(None, ["training.time_limit_s=900"]).training.time_limit_s == 900.0
    for bad in ("0", "-5"):
        err = _error(f"training.time_limit_s={bad}")
        assert err.field == "training.time_limit_s" and "seconds > 0, or null" in str(err)
    assert _error("training.time_limit_s=.inf").field == "training.time_limit_s"


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.name)
def test_bundled_yaml_round_trips(path: Path):
    cfg = load_config(path)
    again = config_from_dict(cfg.to_dict())
    assert again == cfg
    assert pickle.loads(pickle.dumps(cfg)) == cfg  # what Ray does to it on the way to a worker or actor


def test_cache_side_holds_only_the_data_sections():
    cfg = load_config(None, ["training.epochs=3", "sampler.patch_size=[32, 32, 32]"])
    side = cfg.cache_side
    assert type(side) is CacheSideConfig and isinstance(cfg, CacheSideConfig)
    assert set(side.model_fields) == {"data", "preprocessing", "augmentation", "cache", "sampler"}
    assert side.sampler == cfg.sampler and not hasattr(side, "training")
    assert "training" not in pickle.dumps(side).decode("latin-1")


def test_each_section_names_itself_by_its_key():
    # a section nested in the experiment reports its own errors; its prefix must be its key there
    for key, field in ExperimentConfig.model_fields.items():
        if isinstance(field.annotation, type) and hasattr(field.annotation, "section"):
            assert field.annotation.section == key
