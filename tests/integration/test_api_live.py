"""The status API over a real cache actor: in-process over the Ray source, then as the detached API actor."""

from __future__ import annotations

import argparse
import socket

import httpx
import pytest
from fastapi.testclient import TestClient

from cache_service.api import ApiSettings, create_app
from cache_service.api.errors import ApiError
from cache_service.api.ray_source import RaySource
from cache_service.api.server import start_api, stop_api
from cache_service.client import wait_until_ready
from cache_service.cli import cmd_stop

LOOPBACK = "http://127.0.0.1"  # the API answers loopback Host headers only (DNS rebinding)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_api_shows_a_live_cache_and_its_experiment(make_cache, demo_root, config_for) -> None:
    handle, catalog, cfg, fp = make_cache(demo_root, config_for())
    ns = cfg.cache.namespace
    wait_until_ready(handle, timeout_s=90, progress=False)
    handle.register("live-exp", {"world_size": 1})
    handle.publish_sampler("live-exp", 1.5, 0.01, 0.03, [0.7], 0.7, 1)
    client = TestClient(create_app(RaySource(ns), ApiSettings(namespace=ns)), base_url=LOOPBACK)

    [cache] = client.get("/cache").json()
    assert cache["fingerprint"] == fp and cache["state"] == "ready"
    assert cache["items_cached"] == 3 and len(cache["pool"]) == 3
    assert {r.item_id for r in catalog.train} >= set(cache["pool"])
    [items] = client.get("/cache/items", params={"fingerprint": fp}).json()
    assert {i["item_id"] for i in items["items"] if i["state"] in ("in_pool", "leaving")} == set(cache["pool"])
    sampler = client.get("/experiments/live-exp/sampler").json()
    assert sampler["ratio"] == 1.5 and sampler["last_mean_dice"] == 0.7 and len(sampler["history"]) == 1
    assert f'smartcache_sampler_ratio{{experiment="live-exp",fingerprint="{fp}"}} 1.5' in client.get("/metrics").text
    assert client.get("/experiments/nope").status_code == 404
    assert client.get("/cache", params={"fingerprint": "00000000000000aa"}).status_code == 404

    url = start_api("127.0.0.1", _free_port(), None, ns)  # the detached actor, over real HTTP
    try:
        assert httpx.get(f"{url}/healthz", timeout=10).json()["status"] == "ok"
        assert httpx.get(f"{url}/cache", timeout=10).json()[0]["pool"] == cache["pool"]
        assert start_api("127.0.0.1", int(url.rsplit(":", 1)[1]), None, ns) == url  # already running, as asked
        with pytest.raises(ApiError, match="already running in namespace .* with host 127.0.0.1 \\(asked 0.0.0.0\\)"
                                           ", port .*, no token \\(asked with one\\); it was left as it is"):
            start_api("0.0.0.0", 1, "X", ns)  # never the loopback one in place of a public one with a token
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200  # and the running one is untouched
        with pytest.raises(ApiError, match="1 experiment\\(s\\) are attached .*: cache [0-9a-f]+: live-exp"):
            cmd_stop(argparse.Namespace(address=None, namespace=ns, force=False))
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    finally:
        assert cmd_stop(argparse.Namespace(address=None, namespace=ns, force=True)) == 0  # API actor and the cache
    assert not stop_api(ns)
    assert client.get("/cache").json() == []
