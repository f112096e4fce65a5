"""Experiment configuration: frozen, validated pydantic sections loaded from one YAML file.

Split by who reads it (see :mod:`common.config.experiment`): :class:`CacheSideConfig`
(data, preprocessing, cache, sampler, augmentation) is the data side's part;
:class:`ExperimentConfig` adds the name and the trainers' sections (training,
validation). A wrong value fails at load time with a :class:`~common.errors.ConfigError`
naming the dotted field, the value and what is allowed, instead of deep inside a Ray
worker minutes later. The sections are frozen and pickle, so they cross Ray process
boundaries as they are.

=================  ============================================
module             holds
=================  ============================================
``fields``         strict scalars, byte sizes, value rules
``section``        the base class (frozen, no unknown keys)
``messages``       pydantic's errors in the project's words
``data``           dataset, split, deterministic preprocessing
``cache``          the shared cache's own settings
``crops``          the sampler and the augmentation
``training``       training and validation
``experiment``     the cache-side part and the whole experiment
``load``           YAML file + ``--set`` overrides
=================  ============================================
"""

from common.config.cache import CacheConfig, user_cache_root
from common.config.crops import AugmentConfig, SamplerConfig
from common.config.data import MAX_VOXELS, DataConfig, PreprocessConfig
from common.config.experiment import CacheSideConfig, ExperimentConfig
from common.config.fields import parse_bytes
from common.config.load import apply_overrides, config_from_dict, load_config
from common.config.training import DEFAULT_LR, TrainingConfig, ValidationConfig

__all__ = ["AugmentConfig", "CacheConfig", "CacheSideConfig", "DEFAULT_LR", "DataConfig", "ExperimentConfig", "MAX_VOXELS",
           "PreprocessConfig", "SamplerConfig", "TrainingConfig", "ValidationConfig", "apply_overrides",
           "config_from_dict", "load_config", "parse_bytes", "user_cache_root"]
