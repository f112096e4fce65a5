"""Ray-side of the project: the SmartCache actor, its disk tier, registry and REST API, and the client SDK.

``from cache_service import SmartCache`` gives the public client (:mod:`cache_service.sdk`).
It is re-exported lazily (PEP 562) because the SDK imports torch and MONAI, and the cache
actor's process imports this package but must stay free of both.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CropDataset", "Experiment", "SmartCache"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from cache_service import sdk  # heavy (torch, MONAI): only when a user asks for the client

        return getattr(sdk, name)
    raise AttributeError(f"module 'cache_service' has no attribute {name!r}")
