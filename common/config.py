"""Experiment configuration: frozen, validated dataclasses loaded from one YAML file.

Each section is its own dataclass and checks its values in ``__post_init__``, so a
wrong value fails at load time with the field's dotted name, the value and what is
allowed, instead of deep inside a Ray worker minutes later. Overrides use the form
``section.key=value`` where ``value`` is parsed as YAML (``3``, ``0.5``, ``[96,96,96]``,
``true``, ``null``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Union, get_args, get_origin, get_type_hints

import yaml

from common.errors import ConfigError

Triple = tuple[int, int, int]


def _check(cond: bool, name: str, value: object, allowed: str) -> None:
    if not cond:
        raise ConfigError(name, value, allowed)


def _check_prob(name: str, value: float) -> None:
    _check(0.0 <= value <= 1.0, name, value, "a probability between 0 and 1")


def _check_range(name: str, pair: tuple[float, float], lo: float = -math.inf) -> None:
    _check(len(pair) == 2 and lo <= pair[0] <= pair[1], name, pair, f"[low, high] with {lo} <= low <= high")


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_bytes(value: int | float | str, name: str = "cache.byte_budget") -> int:
    """Accept ``1073741824``, ``"1GiB"``, ``"512 MB"``; return a byte count."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ConfigError(name, value, "a byte count such as 2000000000, '2GiB' or '512MB'")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def user_cache_root() -> Path:
    """``$XDG_CACHE_HOME/smartcache`` (``~/.cache/smartcache`` when unset): per user, outside any repository."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "smartcache"


@dataclass(frozen=True)
class DataConfig:
    """Where the MSD dataset lives and how it is split into train and validation."""

    dataset_dir: str = ""
    val_fraction: float = 0.2
    split_seed: int = 0
    val_ids: tuple[str, ...] = ()
    allow_outside_paths: bool = False  # true: dataset.json may list files outside its folder (trusted datasets)

    def __post_init__(self) -> None:
        _check(0.0 <= self.val_fraction < 1.0, "data.val_fraction", self.val_fraction, "a fraction in [0, 1)")


MAX_VOXELS = 1024 ** 3  # 4 GiB as float32: above any CT/MRI volume (512^2 x 2000 is 0.5e9), below a bad header


@dataclass(frozen=True)
class PreprocessConfig:
    """The deterministic chain whose output is cached (the paper's 1 mm RAS + normalisation)."""

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    orientation: str = "RAS"
    normalization: str = "auto"  # auto (from dataset.json modality) | ct | mri | none
    ct_percentiles: tuple[float, float] = (5.0, 95.0)
    clip_percentiles: tuple[float, float] | None = None  # per volume, non-zero voxels, before scaling
    max_voxels: int = MAX_VOXELS  # a NIfTI header declaring more is refused before reading (common.nifti)

    def __post_init__(self) -> None:
        _check(len(self.spacing) == 3 and all(s > 0 for s in self.spacing), "preprocessing.spacing",
               self.spacing, "three positive numbers in mm, e.g. [1.0, 1.0, 1.0]")
        _check(sorted(self.orientation.upper()) == sorted("RAS") or sorted(self.orientation.upper()) in
               (sorted(c) for c in ("LPS", "LAS", "RPS", "LPI", "RAI", "LAI", "RPI")),
               "preprocessing.orientation", self.orientation, "three axis codes such as RAS or LPS")
        _check(self.normalization in ("auto", "ct", "mri", "none"), "preprocessing.normalization",
               self.normalization, "one of auto, ct, mri, none")
        _check_range("preprocessing.ct_percentiles", self.ct_percentiles, 0.0)
        _check(self.max_voxels > 0, "preprocessing.max_voxels", self.max_voxels, "a positive number of voxels")
        _check(self.ct_percentiles[1] <= 100, "preprocessing.ct_percentiles", self.ct_percentiles, "percentiles <= 100")
        if self.clip_percentiles is not None:
            _check_range("preprocessing.clip_percentiles", self.clip_percentiles, 0.0)
            _check(self.clip_percentiles[1] <= 100, "preprocessing.clip_percentiles", self.clip_percentiles,
                   "percentiles <= 100, or null to switch clipping off")


@dataclass(frozen=True)
class AugmentConfig:
    """Random transforms applied after the cache, per crop (paper: flip and intensity shift)."""

    flip_prob: float = 0.5
    shift_prob: float = 0.5
    shift_offset: float = 0.1
    contrast_prob: float = 0.0
    contrast_gamma: tuple[float, float] = (0.7, 1.5)
    scale_prob: float = 0.0
    scale_factor: float = 0.1
    affine_prob: float = 0.0
    affine_rotate_deg: float = 10.0
    affine_scale: float = 0.1

    def __post_init__(self) -> None:
        for name in ("flip_prob", "shift_prob", "contrast_prob", "scale_prob", "affine_prob"):
            _check_prob(f"augmentation.{name}", getattr(self, name))
        _check_range("augmentation.contrast_gamma", self.contrast_gamma, 0.0)
        _check(self.contrast_gamma[0] > 0, "augmentation.contrast_gamma", self.contrast_gamma, "gamma > 0")
        for name in ("shift_offset", "scale_factor", "affine_scale", "affine_rotate_deg"):
            _check(getattr(self, name) >= 0, f"augmentation.{name}", getattr(self, name), "a number >= 0")


@dataclass(frozen=True)
class CacheConfig:
    """How many prepared volumes the shared cache holds and how it rotates them."""

    cache_num: int | None = None  # None: take cache_rate of the training set
    cache_rate: float = 1.0
    replace_rate: float = 0.2
    byte_budget: int | str = "8GiB"
    replace_workers: int = 2
    disk_dir: str | None = "auto"  # "auto": <user cache>/volumes on each node; null: no disk tier
    disk_budget: int | str = "20GiB"  # the disk tier deletes its least recently used files beyond this
    state_dir: str | None = None  # where the registry survives a restart; None: <user cache>/state
    max_restarts: int = 10  # times Ray brings a dead cache actor back under the same name (-1: always)
    recover_timeout_s: float = 300.0  # a consumer waits this long for a dead cache to come back, then gives up
    idle_timeout_s: float = 600.0
    task_num_cpus: float = 0.5
    namespace: str = "smartcache"
    stats_dir: str | None = None  # where dataset-wide CT statistics are kept; None: ~/.cache/smartcache-seg
    enabled: bool = True  # false: trainers load and preprocess every volume every epoch (the baseline)
    # an attached experiment silent this long (crashed without detaching) no longer holds back the rotation
    experiment_timeout_s: float = 1800.0

    def __post_init__(self) -> None:
        if self.cache_num is not None:
            _check(self.cache_num >= 1, "cache.cache_num", self.cache_num, "an integer >= 1, or null to use cache_rate")
        _check(0.0 < self.cache_rate <= 1.0, "cache.cache_rate", self.cache_rate, "a fraction in (0, 1]")
        _check(0.0 <= self.replace_rate <= 1.0, "cache.replace_rate", self.replace_rate, "a fraction in [0, 1]")
        object.__setattr__(self, "byte_budget", parse_bytes(self.byte_budget))
        _check(int(self.byte_budget) > 0, "cache.byte_budget", self.byte_budget, "a positive byte count")
        _check(self.replace_workers >= 1, "cache.replace_workers", self.replace_workers, "an integer >= 1")
        _check(self.idle_timeout_s > 0, "cache.idle_timeout_s", self.idle_timeout_s, "seconds > 0")
        _check(self.experiment_timeout_s > 0, "cache.experiment_timeout_s", self.experiment_timeout_s,
               "seconds > 0 (longer than the slowest experiment's epoch)")
        object.__setattr__(self, "disk_budget", parse_bytes(self.disk_budget, "cache.disk_budget"))
        _check(int(self.disk_budget) > 0, "cache.disk_budget", self.disk_budget, "a positive byte count")
        _check(self.max_restarts >= -1, "cache.max_restarts", self.max_restarts, "an integer >= 0, or -1 for always")
        _check(self.recover_timeout_s > 0, "cache.recover_timeout_s", self.recover_timeout_s, "seconds > 0")
        _check(0 < self.task_num_cpus <= 64, "cache.task_num_cpus", self.task_num_cpus, "a CPU share in (0, 64]")

    def stats_path(self) -> Path:
        """Folder of the dataset-wide CT statistics (``stats_dir``, or ~/.cache/smartcache-seg)."""
        return Path(self.stats_dir or "~/.cache/smartcache-seg").expanduser()

    def disk_path(self) -> Path | None:
        """Root of the Arrow disk tier, resolved where it is used (each node has its own), or None."""
        if self.disk_dir is None or self.disk_dir.lower() in ("", "none", "off"):
            return None
        return user_cache_root() / "volumes" if self.disk_dir == "auto" else Path(self.disk_dir).expanduser()

    def state_path(self) -> Path:
        """Folder where a cache keeps what must survive its restart (the experiment registry)."""
        return Path(self.state_dir).expanduser() if self.state_dir else user_cache_root() / "state"

    def pool_size(self, num_items: int) -> int:
        """Items in the pool for a training set of ``num_items`` (before the byte budget)."""
        by_rate = max(1, math.ceil(num_items * self.cache_rate))
        return min(num_items, by_rate if self.cache_num is None else min(self.cache_num, by_rate))


@dataclass(frozen=True)
class SamplerConfig:
    """Crop sampling: patch size, crops per volume and the adaptive pos/neg ratio (Eq. 2-6)."""

    patch_size: Triple = (112, 112, 112)
    samples_per_volume: int = 4
    gamma: float = 1.0
    ratio_bounds: tuple[float, float] = (0.1, 10.0)
    initial_ratio: float = 1.0
    formula: str = "stable"  # stable (Eq. 5-6) | plain (Eq. 2-3)
    adaptive: bool = True
    # where crops are cut: "cpu" (a producer thread) or "cuda" (on the training device from volumes
    # uploaded once per pool generation, within gpu_cache_bytes; on a CPU run the same code runs on the CPU)
    device: str = "cpu"
    gpu_cache_bytes: int | str = "8GiB"

    def __post_init__(self) -> None:
        _check(len(self.patch_size) == 3 and all(int(p) >= 1 for p in self.patch_size), "sampler.patch_size",
               self.patch_size, "three positive integers, e.g. [96, 96, 96]")
        _check(self.samples_per_volume >= 1, "sampler.samples_per_volume", self.samples_per_volume, "an integer >= 1")
        _check(self.gamma >= 0, "sampler.gamma", self.gamma, "a number >= 0")
        _check(len(self.ratio_bounds) == 2 and 0 < self.ratio_bounds[0] <= self.ratio_bounds[1],
               "sampler.ratio_bounds", self.ratio_bounds, "[low, high] with 0 < low <= high")
        _check(self.ratio_bounds[0] <= self.initial_ratio <= self.ratio_bounds[1], "sampler.initial_ratio",
               self.initial_ratio, f"a ratio within ratio_bounds {list(self.ratio_bounds)}")
        _check(self.formula in ("stable", "plain"), "sampler.formula", self.formula, "stable or plain")
        _check(self.device in ("cpu", "cuda"), "sampler.device", self.device, "cpu or cuda")
        object.__setattr__(self, "gpu_cache_bytes", parse_bytes(self.gpu_cache_bytes, "sampler.gpu_cache_bytes"))
        _check(int(self.gpu_cache_bytes) >= 0, "sampler.gpu_cache_bytes", self.gpu_cache_bytes, "a byte count >= 0")


#: the learning rate each optimiser gets when ``training.lr`` is left out. NovoGrad normalises each
#: layer's step by the layer's gradient norm, so it needs a larger lr than Adam (as MONAI's fast-training
#: recipe, which uses 10x Adam's); measured on the demo phantoms in docs/benchmarks.md ("NovoGrad").
DEFAULT_LR = {"novograd": 1e-2, "adam": 1e-3, "sgd": 1e-2}


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation and the run's stopping rule."""

    batch_size: int = 2
    lr: float | None = None  # None: DEFAULT_LR of the optimiser
    optimizer: str = "novograd"  # novograd | adam | sgd
    loss: str = "dice_ce"  # dice_ce (Eq. 1's soft Dice plus cross-entropy) | dice (Eq. 1 alone)
    weight_decay: float = 0.0
    amp: bool = True
    cpu_bf16: bool = False
    epochs: int = 100
    target_dice: float = 0.9
    num_workers: int = 1
    use_gpu: bool = False
    seed: int = 0
    deterministic: bool = False
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    num_res_units: int = 2
    worker_num_cpus: float = 1.0
    worker_num_gpus: float = 1.0  # GPUs per DDP worker when use_gpu; 0.5 leaves half a GPU to validation
    steps_per_epoch: int | None = None  # None: one pass over the worker's shard
    checkpoint_every: int = 10  # epochs between Ray Train checkpoints (and at the last epoch)
    time_limit_s: float | None = None  # stop after this many seconds even if the target is not reached
    loader_workers: int = 2  # without a cache: DataLoader processes per trainer that load and preprocess
    max_failures: int = 3  # worker-group restarts (from the last checkpoint) Ray Train makes before giving up

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "training.batch_size", self.batch_size, "an integer >= 1")
        _check(self.optimizer in ("novograd", "adam", "sgd"), "training.optimizer", self.optimizer,
               "one of novograd, adam, sgd")
        if self.lr is None:
            object.__setattr__(self, "lr", DEFAULT_LR[self.optimizer])
        _check(self.lr > 0, "training.lr", self.lr, "a learning rate > 0, or null for the optimiser's default")
        _check(self.loss in ("dice", "dice_ce"), "training.loss", self.loss,
               "dice (soft Dice, Eq. 1) or dice_ce (soft Dice + cross-entropy)")
        _check(self.weight_decay >= 0, "training.weight_decay", self.weight_decay, "a number >= 0 (0 switches it off)")
        _check(self.loader_workers >= 0, "training.loader_workers", self.loader_workers,
               "an integer >= 0 (0 loads in the trainer process itself)")
        _check(self.epochs >= 1, "training.epochs", self.epochs, "an integer >= 1")
        _check(0 < self.target_dice <= 1, "training.target_dice", self.target_dice, "a Dice in (0, 1]")
        _check(self.num_workers >= 1, "training.num_workers", self.num_workers, "an integer >= 1")
        _check(len(self.strides) == len(self.channels) - 1, "training.strides", self.strides,
               f"one stride fewer than channels ({len(self.channels)} channels)")
        _check(self.worker_num_cpus > 0, "training.worker_num_cpus", self.worker_num_cpus, "a CPU share > 0")
        _check(0 < self.worker_num_gpus <= 1 or float(self.worker_num_gpus).is_integer(), "training.worker_num_gpus",
               self.worker_num_gpus, "a GPU share in (0, 1] or a whole number of GPUs")
        if self.time_limit_s is not None:
            _check(self.time_limit_s > 0, "training.time_limit_s", self.time_limit_s, "seconds > 0, or null")
        _check(self.max_failures >= -1, "training.max_failures", self.max_failures,
               "an integer >= 0, or -1 to restart the worker group without limit")
        _check(self.checkpoint_every >= 1, "training.checkpoint_every", self.checkpoint_every, "an integer >= 1")
        if self.steps_per_epoch is not None:
            _check(self.steps_per_epoch >= 1, "training.steps_per_epoch", self.steps_per_epoch, "an integer >= 1")


@dataclass(frozen=True)
class ValidationConfig:
    """Sliding-window validation run by the validation actor."""

    roi_size: Triple = (160, 160, 160)
    overlap: float = 0.5
    interval: int = 1
    keep_largest_component: bool = False
    sw_batch_size: int = 1
    num_cpus: float = 0.5
    # GPUs of the validation actor whenever training uses GPUs (ignored on CPU runs): a share such
    # as 0.5 runs beside a trainer on one GPU; a whole number >= 2 splits the validation volumes
    # across that many GPUs, as the paper does.
    num_gpus: float = 0.5

    def __post_init__(self) -> None:
        _check(len(self.roi_size) == 3 and all(int(r) >= 1 for r in self.roi_size), "validation.roi_size",
               self.roi_size, "three positive integers")
        _check(0.0 <= self.overlap < 1.0, "validation.overlap", self.overlap, "a fraction in [0, 1)")
        _check(self.interval >= 1, "validation.interval", self.interval, "an integer >= 1 (epochs)")
        _check(self.sw_batch_size >= 1, "validation.sw_batch_size", self.sw_batch_size, "an integer >= 1")
        _check(0 <= self.num_gpus <= 1 or float(self.num_gpus).is_integer(), "validation.num_gpus", self.num_gpus,
               "0 (validate on CPU), a GPU share in (0, 1], or a whole number of GPUs to split the volumes over")

    def gpus_for(self, training_uses_gpu: bool) -> float:
        """The validation actor's GPU request: none for a CPU run, else ``num_gpus``."""
        return float(self.num_gpus) if training_uses_gpu else 0.0


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: every section, each validated on construction."""

    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    preprocessing: PreprocessConfig = field(default_factory=PreprocessConfig)
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def __post_init__(self) -> None:
        factor = math.prod(self.training.strides)
        for name, size in (("sampler.patch_size", self.sampler.patch_size),
                           ("validation.roi_size", self.validation.roi_size)):
            _check(all(s % factor == 0 for s in size), name, size,
                   f"sizes divisible by {factor}, the U-Net's total stride (training.strides={list(self.training.strides)})")
        _check(self.sampler.device == "cpu" or self.augmentation.affine_prob == 0, "augmentation.affine_prob",
               self.augmentation.affine_prob, "0 with sampler.device=cuda (the device crop path flips and shifts "
               "intensities but does not warp); or set sampler.device=cpu")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS: dict[str, type] = {k: v for k, v in get_type_hints(ExperimentConfig).items() if k != "name"}


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check one YAML value against a field's type; lists become tuples, ints floats."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(name, value, option)
            except ConfigError:
                continue
        raise ConfigError(name, value, "a value of type " + " or ".join(_type_name(a) for a in args))
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(name, value, f"a list such as [1, 2, 3] ({_type_name(hint)})")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(name, value, f"a list of exactly {len(args)} values")
        return tuple(_coerce(f"{name}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(name, value, "true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(name, value, "an integer")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(name, value, "a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(name, value, "a string")
        return value
    return value


def _build_section(section: str, cls: type, raw: Mapping[str, Any]) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(section, raw, "a mapping of key: value")
    hints = get_type_hints(cls)
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        raise ConfigError(f"{section}.{unknown[0]}", raw[unknown[0]], f"unknown key; known keys: {', '.join(hints)}")
    return cls(**{k: _coerce(f"{section}.{k}", v, hints[k]) for k, v in raw.items()})


def config_from_dict(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from a plain nested mapping."""
    unknown = sorted(set(raw) - set(_SECTIONS) - {"name"})
    if unknown:
        raise ConfigError(unknown[0], raw[unknown[0]], f"unknown section; known: name, {', '.join(_SECTIONS)}")
    kwargs: dict[str, Any] = {s: _build_section(s, cls, raw.get(s) or {}) for s, cls in _SECTIONS.items()}
    return ExperimentConfig(name=str(raw.get("name", "experiment")), **kwargs)


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a nested dict (values parsed as YAML)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(item, item, "an override of the form section.key=value")
        parts = key.strip().split(".")
        if len(parts) == 1 and parts[0] == "name":
            raw["name"] = text
            continue
        if len(parts) != 2:
            raise ConfigError(key, text, "an override of the form section.key=value, e.g. training.lr=1e-3")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(key, text, f"a YAML value ({err})") from err
        raw.setdefault(parts[0], {})
        if not isinstance(raw[parts[0]], dict):
            raise ConfigError(parts[0], raw[parts[0]], "a mapping of key: value")
        raw[parts[0]][parts[1]] = value
    return raw


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Load a YAML experiment file (or the defaults) and apply ``--set`` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError("--config", str(path), "an existing YAML file")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError("--config", str(path), f"valid YAML ({err})") from err
        if not isinstance(raw, dict):
            raise ConfigError("--config", str(path), "a YAML mapping of sections")
    return config_from_dict(apply_overrides(raw, overrides))


def replace_section(cfg: ExperimentConfig, section: str, **changes: Any) -> ExperimentConfig:
    """Return a copy of ``cfg`` with some keys of one section changed (and re-validated)."""
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})
