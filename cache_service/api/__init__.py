"""REST status API and dashboard of the SmartCache service (FastAPI on uvicorn).

The app is a pure function of a :class:`~cache_service.api.source.StatusSource` and
:class:`~cache_service.api.settings.ApiSettings`, so tests run it over an in-memory source
and production runs it over the Ray-backed one (in a detached actor or in the foreground).
"""

from cache_service.api.app import create_app
from cache_service.api.settings import ApiSettings

__all__ = ["ApiSettings", "create_app"]
