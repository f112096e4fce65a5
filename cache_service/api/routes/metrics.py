"""``GET /metrics``: Prometheus text exposition of every live cache and experiment."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from cache_service.api import prometheus
from cache_service.api.deps import Authorized, SourceDep

router = APIRouter(tags=["metrics"], dependencies=Authorized)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
def metrics(source: SourceDep) -> Response:
    """Gauges per cache (items, bytes, budget, generation, replacements, quarantine) and per experiment."""
    return Response(prometheus.render(source.caches()), media_type=CONTENT_TYPE_LATEST)
