"""The one place a process starts or joins Ray: :func:`join_or_start`.

The SDK's ``SmartCache.connect`` and every ``smartcache`` command that needs Ray (``train``
and ``demo``, whose launcher then runs on that cluster; ``serve`` and ``stop``) connect
through it, so they agree on what an address means (``None``/``"local"``: a new
local cluster, never one another process left running here; ``"auto"``, ``HOST:PORT`` or
``$RAY_ADDRESS``: join a running one) and fail in the same words.

Token authentication (Ray 2.59 and later): ``ray start --head`` turns it on whenever a token
exists (``~/.ray/auth_token``, which any earlier local ``ray.init`` writes), and a client
must then run with ``RAY_AUTH_MODE=token`` to send it. Ray enables that by itself only for a
bare ``address="auto"``; with an explicit address or ``RAY_ADDRESS`` the client retries
with ``InvalidAuthToken`` for 20 s and then reports that no cluster is there. So when
joining with ``RAY_AUTH_MODE`` unset, :func:`use_token_auth_if_available` turns token mode
on if Ray finds a token (``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH``, or
``~/.ray/auth_token``); a mode the user set is left alone. When joining fails, the error
says whether something listens at the cluster's address (a cluster that refused this
process, most often over the token) or nothing does (no cluster).
"""

from __future__ import annotations

import os
import re
import socket

import ray

# Ray's own switch (what ray.init does for address="auto"): it sets RAY_AUTH_MODE=token for this
# process and its children and refreshes Ray's cached config, which reads the variable only once
from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
from ray.exceptions import AuthenticationError

from common.errors import ClusterUnavailableError

AUTH_MODE_ENV = "RAY_AUTH_MODE"
ADDRESS_ENV = "RAY_ADDRESS"
PROBE_TIMEOUT_S = 2.0
_HOST_PORT = re.compile(r"(\[[0-9a-fA-F:.]+\]|[\w.\-]+):(\d{1,5})")
TOKEN_PLACES = "RAY_AUTH_TOKEN, the file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token"
START_HINT = ("start one with `ray start --head`, or name a running one (--address HOST:PORT on the command line, "
              f"address= in SmartCache.connect, or ${ADDRESS_ENV})")


def join_or_start(address: str | None, *, num_cpus: int | None = None, log_to_driver: bool = True) -> None:
    """Connect this process to Ray, once (nothing happens when it is connected already).

    ``None`` or ``"local"`` starts a new local cluster with ``num_cpus`` (default: all);
    anything else joins a running cluster (``num_cpus`` is then the cluster's business).
    Raises :class:`~common.errors.ClusterUnavailableError` when the cluster cannot be joined.
    """
    if ray.is_initialized():
        return
    if address in (None, "local"):
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver)
        return
    use_token_auth_if_available()
    target = effective_address(address)
    hostport = _host_port(target)
    if hostport is not None and not listening(*hostport):  # fail now, not after Ray's long retries
        raise ClusterUnavailableError(target, f"nothing listens on {target}; {START_HINT}")
    try:
        ray.init(address=address, log_to_driver=log_to_driver)
    except (ConnectionError, RuntimeError, ValueError, AuthenticationError) as err:
        raise join_error(target, err) from err


def use_token_auth_if_available() -> bool:
    """Send Ray's token when joining: with ``RAY_AUTH_MODE`` unset, turn token mode on if a token is found.

    Returns whether token mode is on. An explicit ``RAY_AUTH_MODE`` (``token`` or
    ``disabled``) is the user's choice and is kept.
    """
    mode = os.environ.get(AUTH_MODE_ENV)
    if mode is not None:
        return mode.lower() == "token"
    return bool(maybe_enable_token_auth_if_token_available(warn_if_disabled=False))


def effective_address(address: str) -> str:
    """The address Ray will dial: ``$RAY_ADDRESS`` replaces ``"auto"``, as in ``ray.init``."""
    env = os.environ.get(ADDRESS_ENV)
    return env if address == "auto" and env else address


def _host_port(text: str) -> tuple[str, int] | None:
    """(host, port) of a bare ``HOST:PORT`` address; None for ``auto`` or a URL."""
    found = _HOST_PORT.fullmatch(text.strip())
    return (found.group(1).strip("[]"), int(found.group(2))) if found else None


def listening(host: str, port: int, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether something accepts TCP connections at ``host:port`` (a Ray GCS, if it is a cluster's address)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def join_error(target: str, err: BaseException) -> ClusterUnavailableError:
    """Explain a failed join: a running cluster that refused us (token?) apart from no cluster at all."""
    said = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    found = _HOST_PORT.search(str(err)) or _HOST_PORT.fullmatch(target)
    address = f"{found.group(1)}:{found.group(2)}" if found else target
    hostport = _host_port(address)
    if hostport is None or not listening(*hostport):
        return ClusterUnavailableError(target, f"no Ray cluster is running there ({said}); {START_HINT}")
    if os.environ.get(AUTH_MODE_ENV, "").lower() == "token":
        fix = (f"it did not accept this process's token: use the token of the cluster's head node ({TOKEN_PLACES})")
    else:
        fix = (f"it most likely uses token authentication: export {AUTH_MODE_ENV}=token and make the head node's "
               f"token available ({TOKEN_PLACES})")
    return ClusterUnavailableError(target, f"a Ray cluster is running at {address} but refused this process "
                                           f"({said}); {fix}")


def smallest_object_store() -> int | None:
    """Object store bytes of the smallest live node: a reader on any node may need the whole pool there."""
    sizes = [n["Resources"].get("object_store_memory", 0) for n in ray.nodes() if n.get("Alive")]
    sizes = [int(s) for s in sizes if s]
    return min(sizes) if sizes else None
