"""Pydantic's validation errors, said the way this project says them.

Every section raises :class:`~common.errors.ConfigError` naming the dotted field, the value
and what is allowed (``config field 'training.optimizer' = 'adagrad' is invalid: one of
novograd, adam, sgd``), and an unknown key suggests the nearest valid one. Pydantic's own
text (type names, links) never reaches a user; :func:`config_error` is the one place that
translates it.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from common.config.fields import RULE
from common.errors import ConfigError, UnknownConfigKeyError

_TYPE_WORDS = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "float_type": "a number", "float_parsing": "a number",
    "finite_number": "a finite number (not inf or nan)",
    "string_type": "a string",
    "tuple_type": "a list such as [1, 2, 3]", "list_type": "a list such as [1, 2, 3]",
    "model_type": "a mapping of key: value", "model_attributes_type": "a mapping of key: value",
    "dict_type": "a mapping of key: value",
}


def _dotted(parts: list[str | int]) -> str:
    """``('sampler', 'patch_size', 1)`` -> ``sampler.patch_size[1]``."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _section_at(root: type[BaseModel], parts: list[str | int]) -> type[BaseModel] | None:
    """The model class that holds the last key of ``parts`` (None when the path leaves the models)."""
    model: Any = root
    for part in parts[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        model = field.annotation if field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
    return model


def _unknown(root: type[BaseModel], prefix: list[str | int], parts: list[str | int]) -> UnknownConfigKeyError:
    """An ``extra_forbidden`` key: the nearest valid key (difflib), or the list of valid ones."""
    name = _dotted(prefix + parts)
    section = _section_at(root, parts)
    if section is None:
        return UnknownConfigKeyError(name, "no such key")
    known = list(section.model_fields)
    key = str(parts[-1])
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6) or \
        [k for k in known if key.startswith(k + "_") or k.startswith(key + "_")][:1]
    if near:
        return UnknownConfigKeyError(name, f"did you mean '{_dotted(prefix + parts[:-1] + [near[0]])}'?")
    return UnknownConfigKeyError(name, "known keys here: " + ", ".join(known))


def _choices(expected: str) -> str:
    """Pydantic's ``'a', 'b' or 'c'`` as ``one of a, b, c`` (two choices: ``a or b``)."""
    names = re.findall(r"'([^']*)'", expected)
    return " or ".join(names) if len(names) == 2 else "one of " + ", ".join(names)


def _translate(error: ErrorDetails, root: type[BaseModel], prefix: list[str | int]) -> ConfigError:
    parts = list(error["loc"])
    ctx = error.get("ctx") or {}
    kind = error["type"]
    if kind == "extra_forbidden":
        return _unknown(root, prefix, parts)
    if isinstance(ctx.get("error"), ConfigError):
        # a section inside the experiment failed in its own __init__ (pydantic runs a custom __init__
        # for nested models too), which already named the field with the section's prefix
        return ctx["error"]
    value = error.get("input")
    if kind == RULE:
        if "field" in ctx:  # a model-level rule names the key it is about
            parts, value = parts + [ctx["field"]], ctx["value"]
        allowed = str(ctx["allowed"])
    elif kind == "literal_error":
        allowed = _choices(str(ctx.get("expected", "")))
    else:
        allowed = _TYPE_WORDS.get(kind, "a value of the type documented in common/config")
    return ConfigError(_dotted(prefix + parts) or "config", value, allowed)


def config_error(err: ValidationError, root: type[BaseModel], prefix: str = "") -> ConfigError:
    """The first problem of ``err`` (raised validating ``root``) as a :class:`ConfigError`.

    ``prefix`` is the dotted section of ``root`` when a section is built on its own
    (``CacheConfig(disk_budget="lots")`` names ``cache.disk_budget``).
    """
    return _translate(err.errors()[0], root, [prefix] if prefix else [])
