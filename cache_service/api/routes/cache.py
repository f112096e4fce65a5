"""``GET /cache`` and ``GET /cache/items``.

Several fingerprints (different data or preprocessing) can be live in one namespace, so
both answer a JSON list with one entry per cache, sorted by fingerprint; ``?fingerprint=``
narrows it to that cache (404 if it is not live). An empty list means no cache is running.
"""

from __future__ import annotations

from fastapi import APIRouter, Query

from cache_service.api.deps import Authorized, SelectedCaches
from cache_service.api.models import CacheItems, ItemState, Problem
from cache_service.api.views import items_of
from cache_service.status import CacheStatus

router = APIRouter(prefix="/cache", tags=["cache"], dependencies=Authorized,
                   responses={401: {"model": Problem}, 404: {"model": Problem}, 503: {"model": Problem}})


@router.get("", response_model=list[CacheStatus])
def cache_status(caches: SelectedCaches) -> list[CacheStatus]:
    """Full status of each live cache: pool, budget, rotations, replacements, quarantine, experiments."""
    return caches


@router.get("/items", response_model=list[CacheItems])
def cache_items(caches: SelectedCaches, state: ItemState | None = Query(None, description="only this state")
                ) -> list[CacheItems]:
    """Per item: in pool / leaving / waiting / quarantined, use count, pool position (oldest first)."""
    return [items_of(c, state) for c in caches]
