"""``GET /``: a self-contained HTML dashboard (inline script and SVG; the network may be closed)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from cache_service.api.dashboard_page import render_page
from cache_service.api.deps import Authorized, SettingsDep

router = APIRouter(tags=["dashboard"], dependencies=Authorized)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def dashboard(settings: SettingsDep) -> HTMLResponse:
    """The page polls /cache and /cache/items itself, so it is static apart from the refresh period."""
    return HTMLResponse(render_page(settings.refresh_s), headers={"Cache-Control": "no-store"})
