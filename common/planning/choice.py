"""One planned value and the reason for it: what every rule returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Choice:
    """A config value (``key`` is ``section.field``) with the statistic or limit that decided it."""

    key: str
    value: Any
    reason: str
