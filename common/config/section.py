"""The base of every config section: frozen, no unknown keys, finite numbers, the project's errors.

A section built in code (``CacheConfig(disk_budget="lots")``) fails with the same
:class:`~common.errors.ConfigError` as one read from YAML, so the ``section`` name each
class declares is the prefix of the dotted field the error names.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

from pydantic import BaseModel, ConfigDict, ValidationError
from typing_extensions import Self

from common.config.messages import config_error


class Section(BaseModel):
    """Frozen (hashable, safe to share between threads and pickle to Ray processes) and strict about keys."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True)

    #: the dotted prefix of this section's fields in error messages ("" for the whole experiment); equal to
    #: the section's key in ExperimentConfig, because a nested section names its own fields
    section: ClassVar[str] = ""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise config_error(err, type(self), self.section) from None

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Self:
        """Validate a plain nested mapping (a YAML document, a checkpoint's saved config)."""
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            raise config_error(err, cls, cls.section) from None

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed, validated again (``model_copy(update=...)`` would not check them)."""
        return type(self)(**{**dict(self), **changes})
