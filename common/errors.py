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


class UnknownConfigKeyError(ConfigError):
    """A config key no section has; ``hint`` suggests the nearest valid key (or lists them)."""

    def __init__(self, field: str, hint: str) -> None:
        super().__init__(field, None, hint)
        self.args = (field, hint)  # what __reduce__ rebuilds it from

    def __str__(self) -> str:
        return f"config field '{self.field}' is unknown: {self.allowed}"


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


class PoolFailedError(SmartCacheError, RuntimeError):
    """Every training volume of a cache failed its preparation, so there is nothing to serve.

    Raised to the user at connect / warm-up time instead of a "ready" cache with an empty
    pool, whose first batch would then fail far from the cause.
    """

    def __init__(self, name: str, failed: int, first_cause: str) -> None:
        self.name, self.failed, self.first_cause = name, failed, first_cause
        super().__init__(name, failed, first_cause)

    def __str__(self) -> str:
        return (f"cache '{self.name}': all {self.failed} training volume(s) failed preprocessing, nothing can be "
                f"served; first cause: {self.first_cause}. Fix the transform chain or the files named above")


def root_cause(err: BaseException) -> BaseException:
    """The innermost exception of a ``__cause__`` / ``__context__`` chain.

    MONAI wraps a failing transform's error in ``RuntimeError: applying transform <...>``,
    whose text names an object address and hides what went wrong; the root says it.
    A DataError met on the way is returned as is: it already names the file.
    """
    seen: set[int] = set()
    while id(err) not in seen and not isinstance(err, DataError):
        seen.add(id(err))
        inner = err.__cause__ or err.__context__
        if inner is None:
            break
        err = inner
    return err


def describe_error(err: BaseException) -> str:
    """``Type: message`` of the root cause (a DataError's own text, which names its file)."""
    root = root_cause(err)
    return str(root) if isinstance(root, SmartCacheError) else f"{type(root).__name__}: {root}"

class InvalidIdError(SmartCacheError, ValueError):
    """An id (experiment id, config ``name``) outside the safe character set: it would end up in paths and URLs."""

    def __init__(self, what: str, value: str, rule: str) -> None:
        self.what, self.value, self.rule = what, value, rule
        super().__init__(what, value, rule)

    def __str__(self) -> str:
        return f"{self.what} {self.value!r} is invalid: {self.rule}"


class StorageError(SmartCacheError, OSError):
    """Writing a file failed (disk full, permissions): the message names the path and what to free or fix."""

    def __init__(self, path: str, problem: str) -> None:
        self.path, self.problem = str(path), problem
        super().__init__(str(path), problem)

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"

class ClusterUnavailableError(SmartCacheError, ConnectionError):
    """This process could not join the Ray cluster at an address; the reason says whether one runs there."""

    def __init__(self, address: str, reason: str) -> None:
        self.address, self.reason = address, reason
        super().__init__(address, reason)

    def __str__(self) -> str:
        return f"cannot join the Ray cluster at '{self.address}': {self.reason}"
