"""Errors of the API layer, as domain errors so the CLI prints ``error: ...`` and exits 2."""

from __future__ import annotations

from common.errors import SmartCacheError


class ApiError(SmartCacheError):
    """The status API cannot start, cannot be reached, or refused a request; the message says why."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return self.message
