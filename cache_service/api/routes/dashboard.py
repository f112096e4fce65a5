"""``GET /``: a self-contained HTML dashboard (inline script and SVG; the network may be closed).

The page is served without a token: it holds no data (it fetches the data endpoints,
which do require one, with the token the user gives it), so a browser can open it.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from cache_service.api.dashboard_page import render_page
from cache_service.api.deps import SettingsDep

router = APIRouter(tags=["dashboard"])


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def dashboard(settings: SettingsDep) -> HTMLResponse:
    """The page polls /cache and /cache/items itself, so it is static apart from the refresh period."""
    return HTMLResponse(render_page(settings.refresh_s), headers={"Cache-Control": "no-store"})
