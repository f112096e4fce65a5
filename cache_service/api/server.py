"""Running the API: in this process (``serve_foreground``) or as the detached ``smartcache-api`` actor.

``SmartCacheApi`` is a plain class running uvicorn in a thread; :func:`start_api` wraps it
with ``ray.remote`` as a named, detached actor pinned to the caller's node (so the URL it
returns points at the machine the caller is on, e.g. the head node under ``ray job submit``).
"""

from __future__ import annotations

import threading
import time

import ray
import uvicorn
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cache_service.api.app import create_app
from cache_service.api.errors import ApiError
from cache_service.api.ray_source import RaySource
from cache_service.api.settings import ApiSettings
from cache_service.handle import resolve

API_ACTOR = "smartcache-api"
START_TIMEOUT_S = 30.0


def _server(settings: ApiSettings) -> uvicorn.Server:
    app = create_app(RaySource(settings.namespace), settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                            lifespan="off")
    return uvicorn.Server(config)


def public_url(settings: ApiSettings, node_ip: str | None = None) -> str:
    """The URL a person types: the node's address when bound to every interface."""
    host = node_ip if settings.host in ("0.0.0.0", "::") and node_ip else settings.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.port}"


class SmartCacheApi:
    """The API server inside a Ray actor: uvicorn in a daemon thread, stopped by :meth:`stop`."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings.check()
        self.server = _server(self.settings)
        self.thread = threading.Thread(target=self.server.run, name="smartcache-api", daemon=True)
        self.thread.start()

    def url(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """Wait until uvicorn listens; a bind failure (port taken) kills the thread and is reported here."""
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ApiError(f"the API could not listen on {self.settings.host}:{self.settings.port} "
                               f"(port in use or address not on this node?)")
            time.sleep(0.05)
        return public_url(self.settings, ray.util.get_node_ip_address())

    def differences(self, requested: ApiSettings) -> list[str]:
        """How this server differs from ``requested`` (empty: it is what a second ``serve`` asks for)."""
        return self.settings.differences(requested)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


def start_api(host: str, port: int, token: str | None, namespace: str) -> str:
    """Start (or find) the detached API actor in ``namespace``; returns its URL. Ray must be connected."""
    settings = ApiSettings(host=host, port=port, token=token, namespace=namespace).check()
    _refuse_if_running_otherwise(settings)
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    handle = ray.remote(SmartCacheApi).options(
        name=API_ACTOR, namespace=namespace, lifetime="detached", get_if_exists=True, num_cpus=0,
        max_concurrency=4, max_restarts=0, scheduling_strategy=here).remote(settings)
    try:
        return resolve(handle.url.remote(), name=API_ACTOR, what="url()", timeout_s=START_TIMEOUT_S + 30)
    except ApiError:
        ray.kill(handle, no_restart=True)
        raise


def _refuse_if_running_otherwise(settings: ApiSettings) -> None:
    """An API already running in the namespace with other settings is named, never returned in their place."""
    try:
        running = ray.get_actor(API_ACTOR, namespace=settings.namespace)
    except ValueError:
        return
    differ = resolve(running.differences.remote(settings), name=API_ACTOR, what="differences()",
                     timeout_s=START_TIMEOUT_S)
    if differ:
        raise ApiError(f"an API is already running in namespace '{settings.namespace}' with {', '.join(differ)}; "
                       "it was left as it is. Stop it first (smartcache stop --namespace "
                       f"{settings.namespace} --force, which also stops that namespace's caches), then serve again")


def stop_api(namespace: str) -> bool:
    """Stop the API actor of ``namespace``; False if none was running."""
    try:
        handle = ray.get_actor(API_ACTOR, namespace=namespace)
    except ValueError:
        return False
    try:
        ray.get(handle.stop.remote(), timeout=10)
    except Exception:  # noqa: BLE001 - already dying; killing it is what we want anyway
        pass
    ray.kill(handle, no_restart=True)
    return True


def serve_foreground(settings: ApiSettings) -> None:
    """Run in this process until Ctrl-C (uvicorn handles the signal and returns)."""
    _server(settings.check()).run()
