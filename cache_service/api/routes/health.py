"""``GET /healthz``: open even when a token is set, so load balancers and probes need no secret."""

from __future__ import annotations

from fastapi import APIRouter

from cache_service.api.deps import SettingsDep
from cache_service.api.models import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz(settings: SettingsDep) -> Health:
    """The API process answers; it does not touch Ray (a probe must not depend on the caches)."""
    return Health(auth_required=settings.auth_required)
