"""The one place that names a cache actor: ``smartcache-<fingerprint>``.

The name is how every driver finds the shared cache of a fingerprint (``ray.get_actor``)
and how the status API tells cache actors apart from its own; building it anywhere else
would let the two drift. Pure string logic, so the API's sample data can use it without Ray.
"""

from __future__ import annotations

import re

PREFIX = "smartcache-"
_CACHE_NAME = re.compile(rf"^{PREFIX}([0-9a-f]+)$")


def cache_name(fingerprint: str) -> str:
    """The actor name of the cache for ``fingerprint``."""
    return f"{PREFIX}{fingerprint}"


def is_cache_name(name: str) -> bool:
    """True for a cache actor's name (``smartcache-api`` and other actors are not caches)."""
    return _CACHE_NAME.match(name) is not None
