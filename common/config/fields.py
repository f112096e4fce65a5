"""Field types of the config sections: strict scalars, byte sizes, fixed-length lists, value rules.

Pydantic's lax mode would turn ``"3"`` into an int and ``true`` into ``1.0``; a config
file that says ``epochs: "3"`` or ``lr: true`` is more likely a mistake than a wish, so
ints, bools and strings are strict and a number refuses a bool. Floats accept a numeric
string because YAML 1.1 reads ``1e-3`` as one. Every rule raises :data:`RULE` errors
whose ``allowed`` text is what the user reads, in :mod:`common.config.messages`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Callable

from pydantic import AfterValidator, BeforeValidator, Strict
from pydantic_core import PydanticCustomError

#: the pydantic error type of every rule here; its context holds ``allowed`` (and, from a
#: model-level rule, the ``field`` and ``value`` it is about)
RULE = "config_rule"


def problem(allowed: str, field: str | None = None, value: Any = None) -> PydanticCustomError:
    """A rule violation; ``field`` names the key when a model-level check (not the field itself) raises it."""
    ctx: dict[str, Any] = {"allowed": allowed}
    if field is not None:
        ctx.update(field=field, value=value)
    return PydanticCustomError(RULE, "{allowed}", ctx)


def rule(test: Callable[[Any], bool], allowed: str) -> AfterValidator:
    """A check on the parsed value, with the words the error shows when it fails."""
    def check(value: Any) -> Any:
        if not test(value):
            raise problem(allowed)
        return value
    return AfterValidator(check)


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise problem("a number")
    return value


def exactly(n: int) -> BeforeValidator:
    """A list of ``n`` values, named as one error on the field instead of one per missing position."""
    def check(value: Any) -> Any:
        if isinstance(value, (list, tuple)) and len(value) != n:
            raise problem(f"a list of exactly {n} values")
        return value
    return BeforeValidator(check)


Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
#: finite (the sections forbid inf and nan) and never a bool
Float = Annotated[float, BeforeValidator(_not_bool)]

PositiveInt = Annotated[Int, rule(lambda v: v >= 1, "an integer >= 1")]
Probability = Annotated[Float, rule(lambda v: 0.0 <= v <= 1.0, "a probability between 0 and 1")]
Seconds = Annotated[Float, rule(lambda v: v > 0, "seconds > 0")]
NonNegative = Annotated[Float, rule(lambda v: v >= 0, "a number >= 0")]
Triple = Annotated[tuple[Int, Int, Int], exactly(3)]
PositiveTriple = Annotated[Triple, rule(lambda v: all(p >= 1 for p in v), "three positive integers, e.g. [96, 96, 96]")]
Pair = Annotated[tuple[Float, Float], exactly(2)]

_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
GiB = 2**30


def parse_bytes(value: Any) -> int:
    """Accept ``1073741824``, ``"1GiB"``, ``"512 MB"``, ``"1.5GiB"``; return a byte count."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*", str(value))
    if isinstance(value, bool) or not match or match.group(2).lower() not in _SIZE_UNITS:
        raise problem("a byte count such as 2000000000, '2GiB' or '512MB'")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


#: a byte count written as a number or with a unit (B, kB, MB, GB, KiB, MiB, GiB)
ByteSize = Annotated[int, BeforeValidator(parse_bytes)]
