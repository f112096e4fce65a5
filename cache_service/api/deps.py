"""Dependencies of the routes, as ``Annotated`` aliases: the source, the settings, auth, parameters."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Path, Query, Request, status

from cache_service.api.settings import ApiSettings
from cache_service.api.source import StatusSource
from cache_service.status import CacheStatus
from common.errors import InvalidIdError
from common.ids import check_experiment_id

FINGERPRINT_PATTERN = r"^[0-9a-f]{1,64}$"


def get_source(request: Request) -> StatusSource:
    return request.app.state.source


def get_settings(request: Request) -> ApiSettings:
    return request.app.state.settings


SourceDep = Annotated[StatusSource, Depends(get_source)]
SettingsDep = Annotated[ApiSettings, Depends(get_settings)]


def require_token(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """401 unless ``Authorization: Bearer <token>`` matches (constant-time), when a token is configured."""
    if not settings.token:
        return
    scheme, _, given = (authorization or "").partition(" ")
    expected = settings.token.encode("utf-8")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8"), expected):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token",
                            headers={"WWW-Authenticate": "Bearer"})


Authorized = [Depends(require_token)]

FingerprintQuery = Annotated[str | None, Query(
    pattern=FINGERPRINT_PATTERN, description="only the cache with this fingerprint (lowercase hex); default: all")]
def experiment_id_path(experiment_id: Annotated[str, Path(description="experiment id")]) -> str:
    """The id from the URL, refused with 422 (naming the id and the rule) unless it is a safe id."""
    try:
        return check_experiment_id(experiment_id)
    except InvalidIdError as err:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(err)) from err


ExperimentId = Annotated[str, Depends(experiment_id_path)]


def selected_caches(source: SourceDep, fingerprint: FingerprintQuery = None) -> list[CacheStatus]:
    """All live caches, or the one named by ``?fingerprint=`` (404 if it is not live)."""
    return [source.cache(fingerprint)] if fingerprint else source.caches()


SelectedCaches = Annotated[list[CacheStatus], Depends(selected_caches)]
