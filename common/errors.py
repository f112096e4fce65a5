"""Domain exceptions that survive pickling across Ray processes.

Ray re-raises a remote exception in the caller by pickling it. Exceptions whose
``__init__`` takes keyword-only or extra arguments break that round trip, so each
class here stores its fields and rebuilds itself through ``__reduce__``.
"""

from __future__ import annotations

from typing import Any


class SmartCacheError(Exception):
    """Base class of every error this project raises on purpose."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, self.args)


class ConfigError(SmartCacheError, ValueError):
    """A configuration value is wrong; the message says which field and how to fix it."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(field, value, allowed)

    def __str__(self) -> str:
        return f"config field '{self.field}' = {self.value!r} is invalid: {self.allowed}"


class DataError(SmartCacheError, ValueError):
    """An input file (or a field of dataset.json) is missing, unreadable or inconsistent."""

    def __init__(self, path: str, problem: str) -> None:
        self.path, self.problem = str(path), problem
        super().__init__(str(path), problem)

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


class CacheUnavailableError(SmartCacheError, RuntimeError):
    """The cache actor cannot be reached (it died, was stopped or never started)."""

    def __init__(self, name: str, reason: str) -> None:
        self.name, self.reason = name, reason
        super().__init__(name, reason)

    def __str__(self) -> str:
        return f"cache '{self.name}' is unavailable: {self.reason}"


class UnknownItemError(SmartCacheError, KeyError):
    """An item or experiment id that the service does not know."""

    def __init__(self, kind: str, key: str) -> None:
        self.kind, self.key = kind, key
        super().__init__(kind, key)

    def __str__(self) -> str:
        return f"unknown {self.kind} '{self.key}'"


class ClusterUnavailableError(SmartCacheError, ConnectionError):
    """This process could not join the Ray cluster at an address; the reason says whether one runs there."""

    def __init__(self, address: str, reason: str) -> None:
        self.address, self.reason = address, reason
        super().__init__(address, reason)

    def __str__(self) -> str:
        return f"cannot join the Ray cluster at '{self.address}': {self.reason}"
