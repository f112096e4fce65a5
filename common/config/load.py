"""Reading a config: one YAML file, then ``--set section.key=value`` overrides, then validation.

An override's value is parsed as YAML (``3``, ``0.5``, ``[96,96,96]``, ``true``, ``null``), so
``--set`` and the file accept the same spellings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from common.config.experiment import ExperimentConfig
from common.errors import ConfigError


def config_from_dict(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from a plain nested mapping."""
    return ExperimentConfig.parse(raw)


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


def _read_yaml(path: Path) -> dict[str, Any]:
    """The file's top-level mapping; a missing, non-UTF-8 or malformed file is a ConfigError naming it."""
    if not path.is_file():
        raise ConfigError("--config", str(path), "an existing YAML file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError("--config", str(path), f"a UTF-8 text file (byte {err.start} is not UTF-8; "
                                                 "save it as UTF-8)") from err
    except yaml.YAMLError as err:
        raise ConfigError("--config", str(path), f"valid YAML ({err})") from err
    if not isinstance(raw, dict):
        raise ConfigError("--config", str(path), "a YAML mapping of sections")
    return raw


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Load a YAML experiment file (or the defaults) and apply ``--set`` overrides."""
    raw = _read_yaml(Path(path)) if path is not None else {}
    return config_from_dict(apply_overrides(raw, overrides))
