"""``GET /sweeps``: every sweep with trials attached to a live cache, its trials, caches and best Dice."""

from __future__ import annotations

from fastapi import APIRouter

from cache_service.api.deps import Authorized, SourceDep
from cache_service.api.models import Problem
from cache_service.api.sweeps import SweepView, sweeps_of

router = APIRouter(prefix="/sweeps", tags=["sweeps"], dependencies=Authorized,
                   responses={401: {"model": Problem}, 503: {"model": Problem}})


@router.get("", response_model=list[SweepView])
def list_sweeps(source: SourceDep) -> list[SweepView]:
    """Sweeps by name; per trial its cache (fingerprint), state, epoch, best and last Dice, searched values."""
    return sweeps_of(source.experiments())
