"""Where the API listens and who may read it.

A status page leaks dataset item ids and experiment names, so anything reachable from
another machine must be behind a token: :meth:`ApiSettings.check` refuses to start a
server bound to a non-loopback address without one.
"""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, Field

from cache_service.api.errors import ApiError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8740
DEFAULT_NAMESPACE = "smartcache"
TOKEN_ENV = "SMARTCACHE_TOKEN"
URL_ENV = "SMARTCACHE_URL"


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ApiSettings(BaseModel):
    """Bind address, bearer token (``None``: no auth, loopback only), Ray namespace, page refresh."""

    host: str = DEFAULT_HOST
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    token: str | None = None
    namespace: str = DEFAULT_NAMESPACE
    refresh_s: float = Field(2.0, gt=0)

    def check(self) -> "ApiSettings":
        """Refuse an unauthenticated server that other machines could reach."""
        if self.token is not None and not self.token.strip():
            raise ApiError("the API token is empty; pass a non-empty --token or unset SMARTCACHE_TOKEN")
        if not is_loopback(self.host) and not self.token:
            raise ApiError(f"refusing to bind {self.host}:{self.port} without a token: anything but a loopback "
                           f"address needs --token or {TOKEN_ENV} (every endpoint but /healthz then requires "
                           f"'Authorization: Bearer <token>')")
        return self

    @property
    def auth_required(self) -> bool:
        return bool(self.token)
