"""A user's own MONAI ``Compose``: where it splits, whether its prefix can be cached, and its identity.

The cache runs the deterministic prefix (up to the first ``Randomizable``) once per item
in other processes, so the prefix must pickle and must hold nothing random; its identity
(every transform's class and arguments) goes into the cache fingerprint, so two chains
that differ anywhere in the prefix never share a cache.

The random suffix runs on the consumer, on the crops the service cut. A
``RandCropByPosNegLabeld`` in the suffix is **replaced by the service's crop**: its
``spatial_size`` becomes the patch size, ``num_samples`` the crops per volume and
``pos / neg`` the starting ratio, which validation then adapts (paper Eq. 4). Every other
suffix transform runs unchanged on each crop.
"""

from __future__ import annotations

import enum
import hashlib
import inspect
import json
import pickle
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from monai.transforms import Compose, RandCropByPosNegLabeld

from common.errors import ConfigError
from common.preprocess import is_random, split_chain

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_MAX_DEPTH = 8
_VOLATILE = frozenset({"R"})  # MONAI's per-transform RandomState: state, not an argument


@dataclass(frozen=True)
class CropSpec:
    """What a ``RandCropByPosNegLabeld`` in the suffix asked for; the service's crop honours it."""

    patch_size: tuple[int, int, int]
    samples_per_volume: int
    initial_ratio: float  # pos / neg
    where: str = "transforms"  # where the crop sits in the user's (flattened) chain, "transforms[5]"

    @property
    def patch_parameter(self) -> str:
        """The user's own setting of the patch, as an error names it: ``transforms[5].spatial_size``."""
        return f"{self.where}.spatial_size (RandCropByPosNegLabeld)"


@dataclass(frozen=True)
class UserChain:
    """A user's chain split for the cache: the prefix it runs, the suffix the consumer runs."""

    prefix: Compose
    suffix: Compose  # without the RandCropByPosNegLabeld, which became ``crop``
    crop: CropSpec | None
    identity: str  # hash of the prefix's transforms and arguments (part of the cache fingerprint)


def _flat(chain: Compose | Sequence[Callable]) -> list[Callable]:
    """Top-level transforms with plain nested ``Compose`` objects inlined (a Compose is Randomizable itself)."""
    if isinstance(chain, Compose):
        return list(chain.flatten().transforms)
    return [t for item in chain for t in (_flat(item) if type(item) is Compose else [item])]


def describe(obj: Any, depth: int = 0) -> Any:
    """A JSON-able, address-free description of a transform and everything it holds (its arguments)."""
    if depth > _MAX_DEPTH:
        return type(obj).__qualname__
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, enum.Enum):
        return f"{type(obj).__qualname__}.{obj.name}"
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        arr = np.ascontiguousarray(obj.detach().cpu().numpy() if isinstance(obj, torch.Tensor) else obj)
        return {"array": list(arr.shape), "dtype": str(arr.dtype), "sha1": hashlib.sha1(arr.tobytes()).hexdigest()}
    if isinstance(obj, (list, tuple)):
        return [describe(x, depth + 1) for x in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(json.dumps(describe(x, depth + 1), sort_keys=True) for x in obj)
    if isinstance(obj, dict):
        return {str(k): describe(v, depth + 1) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (np.random.RandomState, np.random.Generator, torch.Generator)):
        return type(obj).__qualname__
    if isinstance(obj, (type, torch.dtype, np.dtype)) or inspect.isroutine(obj):
        return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', str(obj))}"
    if hasattr(obj, "__dict__"):
        state = {k: describe(v, depth + 1) for k, v in sorted(vars(obj).items()) if k not in _VOLATILE}
        return {"class": f"{type(obj).__module__}.{type(obj).__qualname__}", "state": state}
    return _ADDRESS.sub("", repr(obj))


def _random_inside(obj: Any, depth: int = 0) -> str | None:
    """Name of a random transform held anywhere inside ``obj`` (a wrapper around a Rand* transform)."""
    if depth > _MAX_DEPTH or not hasattr(obj, "__dict__") or inspect.isroutine(obj) or isinstance(obj, type):
        return None
    if depth > 0 and type(obj) is not Compose and is_random(obj):
        return type(obj).__name__
    values = list(vars(obj).values())
    nested = [x for v in values for x in (v if isinstance(v, (list, tuple)) else [v])]
    return next((name for v in nested if (name := _random_inside(v, depth + 1)) is not None), None)


def check_cacheable(prefix: Sequence[Callable]) -> None:
    """Refuse a prefix the cache cannot run: a random transform inside it, or one that does not pickle."""
    for i, t in enumerate(prefix):
        name = type(t).__name__
        inner = _random_inside(t)
        if inner is not None:
            raise ConfigError(f"transforms[{i}]", name, f"it holds the random transform {inner}, so its output "
                              "cannot be cached; move it after the deterministic steps")
        try:
            pickle.dumps(t)
        except Exception as err:  # pickle raises several types (PicklingError, TypeError, AttributeError)
            raise ConfigError(f"transforms[{i}]", name, "the cache runs the deterministic prefix in other processes, "
                              f"so it must pickle, but it does not ({type(err).__name__}: {err}); use a "
                              "module-level function or class instead of a lambda or closure") from err


def _crop_spec(t: RandCropByPosNegLabeld, where: str) -> CropSpec:
    cropper = t.cropper
    size = cropper.spatial_size
    size = (size,) * 3 if isinstance(size, int) else tuple(int(s) for s in size)
    if len(size) != 3 or any(s <= 0 for s in size):
        raise ConfigError(f"{where}.spatial_size", size, "three positive sizes: the service crops fixed 3D patches")
    pos = float(cropper.pos_ratio)
    ratio = pos / (1.0 - pos) if pos < 1.0 else float("inf")
    return CropSpec(size, int(cropper.num_samples), ratio, where)  # type: ignore[arg-type]


def split_user_chain(chain: Compose | Sequence[Callable]) -> UserChain:
    """Split at the first random transform, check the prefix, lift the pos/neg crop out of the suffix."""
    transforms = _flat(chain)
    prefix, suffix = split_chain(transforms)
    check_cacheable(prefix.transforms)
    crop, rest = None, []
    for i, t in enumerate(suffix.transforms):
        if isinstance(t, RandCropByPosNegLabeld):
            if crop is not None:
                raise ConfigError(f"transforms[{len(prefix.transforms) + i}]", type(t).__name__,
                                  "only one RandCropByPosNegLabeld: the service cuts one crop per sample")
            crop = _crop_spec(t, f"transforms[{len(prefix.transforms) + i}]")
        else:
            rest.append(t)
    return UserChain(prefix, Compose(rest), crop, chain_identity(prefix.transforms))


def chain_identity(prefix: Sequence[Callable]) -> str:
    """Stable hash of the prefix transforms and their arguments (no memory addresses, no RNG state)."""
    payload = json.dumps([describe(t) for t in prefix], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
