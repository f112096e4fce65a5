"""Per-experiment crop settings: the pos/neg sampler (Eq. 2-6) and the random augmentation after the cache.

Both are read by the consumer (the SDK's crop producer), never by the cache actor: several
experiments with different patches and ratios share one cache.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import model_validator
from typing_extensions import Self

from common.config.fields import (GiB, Bool, ByteSize, Float, NonNegative, Pair, PositiveInt, PositiveTriple,
                                  Probability, problem, rule)
from common.config.section import Section


class SamplerConfig(Section):
    """Crop sampling: patch size, crops per volume and the adaptive pos/neg ratio (Eq. 2-6)."""

    section: ClassVar[str] = "sampler"

    patch_size: PositiveTriple = (112, 112, 112)
    samples_per_volume: PositiveInt = 4
    gamma: NonNegative = 1.0
    ratio_bounds: Annotated[Pair, rule(lambda v: 0 < v[0] <= v[1], "[low, high] with 0 < low <= high")] = (0.1, 10.0)
    initial_ratio: Float = 1.0
    """The pos/neg ratio before the first validation; within ratio_bounds."""
    formula: Literal["stable", "plain"] = "stable"
    """stable: Eq. 5-6; plain: Eq. 2-3."""
    adaptive: Bool = True
    device: Literal["cpu", "cuda"] = "cpu"
    """Where crops are cut: cpu (a producer thread) or cuda (on the training device, from volumes uploaded
    once per pool generation within gpu_cache_bytes; on a CPU run the same code runs on the CPU)."""
    gpu_cache_bytes: Annotated[ByteSize, rule(lambda v: v >= 0, "a byte count >= 0")] = 8 * GiB

    @model_validator(mode="after")
    def _ratio_within_bounds(self) -> Self:
        low, high = self.ratio_bounds
        if not low <= self.initial_ratio <= high:
            raise problem(f"a ratio within ratio_bounds {list(self.ratio_bounds)}", "initial_ratio",
                          self.initial_ratio)
        return self


class AugmentConfig(Section):
    """Random transforms applied after the cache, per crop (paper: flip and intensity shift)."""

    section: ClassVar[str] = "augmentation"

    flip_prob: Probability = 0.5
    shift_prob: Probability = 0.5
    shift_offset: NonNegative = 0.1
    contrast_prob: Probability = 0.0
    contrast_gamma: Annotated[Pair, rule(lambda v: 0 < v[0] <= v[1], "[low, high] gammas with 0 < low <= high")
                              ] = (0.7, 1.5)
    scale_prob: Probability = 0.0
    scale_factor: NonNegative = 0.1
    affine_prob: Probability = 0.0
    affine_rotate_deg: NonNegative = 10.0
    affine_scale: NonNegative = 0.1
