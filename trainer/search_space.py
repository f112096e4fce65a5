"""A sweep's search space: YAML lines such as ``training.lr: loguniform(1e-4, 1e-2)`` as Ray Tune domains.

    training.lr: loguniform(1e-4, 1e-2)
    training.optimizer: choice([adam, novograd])
    sampler.patch_size: choice([[32, 32, 32], [48, 48, 48]])
    sampler.gamma: uniform(0.5, 2.0)
    training.seed: grid([0, 1])
    training.epochs: 8                      # a plain value: the same in every trial

Keys are ``section.key`` of the experiment config (a section may also be written as a
nested mapping). The text is parsed here; sampling is Tune's (``tune.loguniform`` etc.),
so a space means what it means in Tune. Trials are drawn up front (:func:`draw_trials`)
so the plan printed before the sweep starts says exactly which trial gets which values.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml
from ray import tune
from ray.tune.search.sample import Domain

from common.errors import ConfigError

# name -> (Tune's function, number of arguments it takes, whether its arguments are numbers)
FUNCTIONS: dict[str, tuple[Any, tuple[int, ...], bool]] = {
    "uniform": (tune.uniform, (2,), True),
    "loguniform": (tune.loguniform, (2,), True),
    "quniform": (tune.quniform, (3,), True),
    "qloguniform": (tune.qloguniform, (3,), True),
    "randint": (tune.randint, (2,), True),
    "choice": (tune.choice, (1,), False),
    "grid": (tune.grid_search, (1,), False),
}
_CALL = re.compile(r"^\s*([a-z_]+)\s*\((.*)\)\s*$", re.DOTALL)
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True)
class SearchParam:
    """One searched (or fixed) config key: ``kind`` is a name of :data:`FUNCTIONS`, or ``fixed``."""

    key: str
    kind: str
    args: tuple[Any, ...]

    def domain(self) -> Any:
        """The Tune domain (``tune.loguniform(...)``), the grid spec, or the fixed value itself."""
        if self.kind == "fixed":
            return self.args[0]
        return FUNCTIONS[self.kind][0](*self.args)


def numbers_in(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` as a string: turn number-like strings (also in lists) into numbers."""
    if isinstance(value, list):
        return [numbers_in(v) for v in value]
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        text = value.strip()
        return int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
    return value


def parse_value(key: str, text: Any) -> SearchParam:
    """``loguniform(1e-4, 1e-2)`` -> SearchParam; anything that is not a call is a fixed value."""
    match = _CALL.match(text) if isinstance(text, str) else None
    if match is None or match.group(1) not in FUNCTIONS:
        if match is not None:
            raise ConfigError(f"space.{key}", text, f"a search function, one of {', '.join(FUNCTIONS)}")
        return SearchParam(key, "fixed", (numbers_in(text),))
    name, inner = match.groups()
    _, arity, numeric = FUNCTIONS[name]
    try:
        args = yaml.safe_load(f"[{inner}]")
    except yaml.YAMLError as err:
        raise ConfigError(f"space.{key}", text, f"arguments written as YAML, e.g. {name}([a, b]) ({err})") from err
    args = numbers_in(args)
    if len(args) not in arity:
        raise ConfigError(f"space.{key}", text, f"{name} takes {' or '.join(map(str, arity))} argument(s)")
    if numeric and not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise ConfigError(f"space.{key}", text, f"{name} takes numbers, e.g. {name}(1e-4, 1e-2)")
    if not numeric and not (isinstance(args[0], list) and args[0]):
        raise ConfigError(f"space.{key}", text, f"{name} takes one non-empty list, e.g. {name}([adam, novograd])")
    if name in ("uniform", "loguniform", "randint") and not args[0] < args[1]:
        raise ConfigError(f"space.{key}", text, f"{name}(low, high) with low < high")
    if name == "loguniform" and args[0] <= 0:
        raise ConfigError(f"space.{key}", text, "loguniform bounds above 0")
    return SearchParam(key, name, tuple(args))


def _flatten(raw: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if "." in str(key):
            flat[str(key)] = value
        elif isinstance(value, Mapping):  # a nested section: training: {lr: ...}
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            raise ConfigError(f"space.{key}", value, "a config key written section.key, e.g. training.lr")
    return flat


def parse_space(raw: Mapping[str, Any]) -> dict[str, SearchParam]:
    """Every line of a space; at least one must search something."""
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError("--space", raw, "a YAML mapping such as 'training.lr: loguniform(1e-4, 1e-2)'")
    space = {key: parse_value(key, text) for key, text in _flatten(raw).items()}
    if all(p.kind == "fixed" for p in space.values()):
        raise ConfigError("--space", sorted(space), "at least one searched key, e.g. training.lr: choice([1e-3, 1e-2])")
    return space


def load_space(path: str | Path) -> dict[str, SearchParam]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--space", str(path), "an existing YAML file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError("--space", str(path), f"valid YAML ({err})") from err
    return parse_space(raw or {})


def draw_trials(space: Mapping[str, SearchParam], num_samples: int, seed: int = 0) -> list[dict[str, Any]]:
    """The trials' values, as Tune would make them: every grid combination ``num_samples`` times,
    the other keys drawn by their Tune domain (seeded, so a plan is reproducible)."""
    if num_samples < 1:
        raise ConfigError("--trials", num_samples, "at least 1")
    rng = np.random.default_rng(seed)
    grids = [p for p in space.values() if p.kind == "grid"]
    combos = list(itertools.product(*[p.args[0] for p in grids])) or [()]
    trials = []
    for _ in range(num_samples):
        for combo in combos:
            values: dict[str, Any] = {p.key: v for p, v in zip(grids, combo)}
            for p in space.values():
                if p.kind == "fixed":
                    values[p.key] = p.args[0]
                elif p.kind != "grid":
                    domain: Domain = p.domain()
                    values[p.key] = _plain(domain.sample(random_state=rng))
            trials.append({k: values[k] for k in space})
    return trials


def _plain(value: Any) -> Any:
    """numpy scalars and arrays out of Tune's samplers as plain Python (for YAML, JSON and the config)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    return value


def searched_keys(space: Mapping[str, SearchParam]) -> list[str]:
    """The keys that differ between trials (the columns of the plan and the results table)."""
    return [k for k, p in space.items() if p.kind != "fixed"]


def apply_values(base: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the nested raw config ``base`` with ``section.key`` values set (``name`` too)."""
    raw = {k: dict(v) if isinstance(v, Mapping) else v for k, v in base.items()}
    for key, value in values.items():
        section, _, field = key.partition(".")
        if not field:
            raise ConfigError(f"space.{key}", value, "a config key written section.key, e.g. training.lr")
        if raw.get(section) is not None and not isinstance(raw[section], dict):
            raise ConfigError(section, raw[section], "a mapping of key: value")
        raw.setdefault(section, {})
        raw[section] = dict(raw[section] or {})
        raw[section][field] = value
    return raw
