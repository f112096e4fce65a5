"""Where the API listens and who may read it.

A status page leaks dataset item ids and experiment names, so anything reachable from
another machine must be behind a token: :meth:`ApiSettings.check` refuses to start a
server bound to a non-loopback address without one.
"""

from __future__ import annotations

import hmac
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

    def differences(self, requested: "ApiSettings") -> list[str]:
        """How a running server (``self``) differs from what a second ``serve`` asks for, in words; a
        server on 127.0.0.1 must not silently stand in for one asked on 0.0.0.0 with a token."""
        out = [f"{k} {getattr(self, k)} (asked {getattr(requested, k)})" for k in ("host", "port", "namespace")
               if getattr(self, k) != getattr(requested, k)]
        mine, asked = (self.token or "").encode("utf-8"), (requested.token or "").encode("utf-8")
        if not hmac.compare_digest(mine, asked):
            out.append("no token (asked with one)" if not mine else
                       "a different token" if asked else "a token (asked without one)")
        return out

    def trusted_hosts(self) -> list[str] | None:
        """Host headers a loopback server answers (None: no check, for a non-loopback bind behind a token).

        A web page on another site can make the browser resolve its own name to 127.0.0.1 (DNS
        rebinding) and read a token-less loopback API; the browser still sends that site's name
        as ``Host``, so answering only loopback names (and the bound host) closes the hole.
        """
        if not is_loopback(self.host):
            return None
        bound = f"[{self.host.strip('[]')}]" if ":" in self.host else self.host
        return sorted({"localhost", "127.0.0.1", "[::1]", bound.lower()})
