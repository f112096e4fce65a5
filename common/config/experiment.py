"""One experiment's config, split by who reads it.

:class:`CacheSideConfig` is what the data side needs: the dataset and its split, the
deterministic chain, the cache itself, and the per-experiment crop settings (sampler and
augmentation) that the SDK's crop producer applies. :class:`ExperimentConfig` adds the
name and what only the trainers and the validation actor read (training, validation).
The cache actor receives less still: its :class:`~cache_service.actor.ServiceSpec` holds
the ``cache`` section and two numbers, and the preparation tasks get the ``cache`` section.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar

from pydantic import BeforeValidator, Field, model_validator
from typing_extensions import Self

from common.config.cache import CacheConfig
from common.config.crops import AugmentConfig, SamplerConfig
from common.config.data import DataConfig, PreprocessConfig
from common.config.fields import problem
from common.config.section import Section
from common.config.training import TrainingConfig, ValidationConfig


def _name(value: Any) -> Any:
    """A YAML ``name: 2024`` is still a name."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


class CacheSideConfig(Section):
    """The sections the cache and its consumers' crop path read; nothing of training or validation."""

    section: ClassVar[str] = ""

    data: DataConfig = Field(default_factory=DataConfig)
    preprocessing: PreprocessConfig = Field(default_factory=PreprocessConfig)
    augmentation: AugmentConfig = Field(default_factory=AugmentConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)

    @model_validator(mode="after")
    def _device_crops_do_not_warp(self) -> Self:
        if self.sampler.device == "cuda" and self.augmentation.affine_prob != 0:
            raise problem("0 with sampler.device=cuda (the device crop path flips and shifts intensities but does "
                          "not warp); or set sampler.device=cpu", "augmentation.affine_prob",
                          self.augmentation.affine_prob)
        return self


class ExperimentConfig(CacheSideConfig):
    """One experiment: every section, each validated on construction."""

    name: Annotated[str, BeforeValidator(_name)] = "experiment"
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)

    @model_validator(mode="after")
    def _sizes_fit_the_network(self) -> Self:
        factor = math.prod(self.training.strides)
        for name, size in (("sampler.patch_size", self.sampler.patch_size),
                           ("validation.roi_size", self.validation.roi_size)):
            if any(s % factor for s in size):
                raise problem(f"sizes divisible by {factor}, the U-Net's total stride "
                              f"(training.strides={list(self.training.strides)})", name, size)
        return self

    @property
    def cache_side(self) -> CacheSideConfig:
        """Only the data side's sections, for code (and processes) that must not see training settings."""
        return CacheSideConfig(**{key: getattr(self, key) for key in CacheSideConfig.model_fields})

    def to_dict(self) -> dict[str, Any]:
        """Plain nested data (for report.json and checkpoints that hold no classes); :meth:`parse` reads it back."""
        return self.model_dump()
