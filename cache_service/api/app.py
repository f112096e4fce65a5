"""``create_app(source, settings)``: the whole API as a pure function of its data source and settings."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.middleware.trustedhost import TrustedHostMiddleware

from cache_service.api.deps import require_token
from cache_service.api.routes import cache, dashboard, experiments, health, metrics, sweeps
from cache_service.api.settings import ApiSettings
from cache_service.api.source import GuardedSource, StatusSource
from common.errors import CacheUnavailableError, UnknownItemError


def _not_found(_: Request, err: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(err)}, status_code=404)


def _unavailable(_: Request, err: Exception) -> JSONResponse:
    """A dead or unreachable cache is a temporary server-side condition, not a bug: 503 with the reason."""
    return JSONResponse({"detail": str(err)}, status_code=503, headers={"Retry-After": "2"})


def create_app(source: StatusSource, settings: ApiSettings | None = None) -> FastAPI:
    """Build the app; ``settings.check()`` has already refused unsafe binds when a server starts it."""
    settings = settings or ApiSettings()
    app = FastAPI(title="SmartCache status API", version="1", docs_url=None, redoc_url=None, openapi_url=None,
                  description="Cache, pool and adaptive-sampler status of the SmartCache service.")
    app.state.source = GuardedSource(source)
    app.state.settings = settings
    for module in (health, cache, experiments, sweeps, metrics, dashboard):
        app.include_router(module.router)
    app.add_exception_handler(UnknownItemError, _not_found)
    app.add_exception_handler(CacheUnavailableError, _unavailable)
    hosts = settings.trusted_hosts()
    if hosts is not None:  # against DNS rebinding: a loopback API answers loopback Host headers only
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False)

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_token)])
    def openapi() -> dict[str, Any]:
        """The schema, behind the same token as the data (Swagger UI is off: it needs a CDN)."""
        return app.openapi()

    return app
