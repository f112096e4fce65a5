"""Starting or joining Ray, without Ray: when token auth is switched on, and what a failed join says."""

from __future__ import annotations

import os
import socket
from concurrent import futures
from typing import Any, Iterator

import grpc
import pytest
from ray.core.generated.gcs_service_pb2 import CheckAliveReply
from ray.core.generated.gcs_service_pb2_grpc import NodeInfoGcsServiceServicer, add_NodeInfoGcsServiceServicer_to_server

import cache_service.cluster as cluster
from common.errors import ClusterUnavailableError


class FakeRay:
    """``ray.init`` / ``ray.is_initialized`` stand-in that records the calls (and can fail like Ray)."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.inits: list[dict[str, Any]] = []
        self.fail = fail

    def is_initialized(self) -> bool:
        return bool(self.inits) and self.fail is None

    def init(self, **kwargs: Any) -> None:
        self.inits.append(kwargs)
        if self.fail is not None:
            raise self.fail


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeRay, list[bool]]]:
    ray, switched = FakeRay(), []
    monkeypatch.setattr(cluster.ray, "is_initialized", ray.is_initialized)
    monkeypatch.setattr(cluster.ray, "init", ray.init)
    monkeypatch.setattr(cluster, "maybe_enable_token_auth_if_token_available",
                        lambda warn_if_disabled: switched.append(warn_if_disabled) or True)
    for name in (cluster.AUTH_MODE_ENV, cluster.ADDRESS_ENV):  # set first, so the unset state is what is restored
        monkeypatch.setenv(name, "")  # even after the code under test sets it itself
        monkeypatch.delenv(name)
    yield ray, switched


@pytest.fixture
def listener() -> Iterator[int]:
    """A port something listens on (as a cluster's GCS would)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


class FakeGcs(NodeInfoGcsServiceServicer):
    """The GCS's CheckAlive, with or without token auth (a real gRPC server on a free port, no Ray)."""

    def __init__(self, wants_token: bool) -> None:
        self.wants_token = wants_token
        self.calls = 0

    def CheckAlive(self, request: Any, context: grpc.ServicerContext) -> CheckAliveReply:  # noqa: N802 - gRPC's name
        self.calls += 1
        if self.wants_token and not any(key == "authorization" for key, _ in context.invocation_metadata()):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "InvalidAuthToken: Authentication token is missing")
        return CheckAliveReply(ray_version="fake")


def _serve(gcs: FakeGcs) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    add_NodeInfoGcsServiceServicer_to_server(gcs, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture(params=[True, False], ids=["token-cluster", "no-auth-cluster"])
def gcs(request: pytest.FixtureRequest) -> Iterator[tuple[FakeGcs, int]]:
    fake_gcs = FakeGcs(wants_token=request.param)
    server, port = _serve(fake_gcs)
    yield fake_gcs, port
    server.stop(grace=None)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_address_starts_a_new_local_cluster_and_leaves_auth_to_ray(fake) -> None:
    ray, switched = fake
    cluster.join_or_start(None, num_cpus=3, log_to_driver=False)
    cluster.join_or_start("auto")  # connected already: nothing happens
    assert ray.inits == [{"address": "local", "num_cpus": 3, "include_dashboard": False, "log_to_driver": False}]
    assert switched == []


def test_joining_a_cluster_that_cannot_be_asked_switches_token_auth_on_if_a_token_is_found(fake, listener: int) -> None:
    ray, switched = fake  # a listener that is not a GCS: the probe cannot tell, so Ray's own rule applies
    cluster.join_or_start(f"127.0.0.1:{listener}")
    assert switched == [False] and ray.inits == [{"address": f"127.0.0.1:{listener}", "log_to_driver": True}]


def test_the_probe_tells_a_token_cluster_from_one_without_auth(gcs) -> None:
    fake_gcs, port = gcs
    assert cluster.cluster_wants_token("127.0.0.1", port) is fake_gcs.wants_token and fake_gcs.calls == 1


def test_the_probe_of_something_that_is_not_a_gcs_cannot_tell(listener: int) -> None:
    assert cluster.cluster_wants_token("127.0.0.1", listener, timeout_s=0.5) is None


def test_joining_matches_the_clusters_auth_mode(fake, gcs) -> None:
    """A token-mode driver on a cluster without auth refuses the GCS's calls and loses its actors: never do that."""
    ray, switched = fake
    fake_gcs, port = gcs
    cluster.join_or_start(f"127.0.0.1:{port}")
    assert ray.inits == [{"address": f"127.0.0.1:{port}", "log_to_driver": True}]
    if fake_gcs.wants_token:
        assert switched == [False] and cluster.AUTH_MODE_ENV not in os.environ
    else:  # pinned off, so that neither this process, its children nor Ray's "auto" rule turn it on
        assert switched == [] and os.environ[cluster.AUTH_MODE_ENV] == "disabled"


def test_ray_address_for_auto_is_asked_too(fake, gcs, monkeypatch: pytest.MonkeyPatch) -> None:
    ray, switched = fake
    fake_gcs, port = gcs
    monkeypatch.setenv(cluster.ADDRESS_ENV, f"127.0.0.1:{port}")
    cluster.join_or_start("auto")
    assert ray.inits == [{"address": "auto", "log_to_driver": True}] and fake_gcs.calls == 1
    assert switched == ([False] if fake_gcs.wants_token else [])


@pytest.mark.parametrize("mode, token", [("disabled", False), ("token", True), ("TOKEN", True)])
def test_an_auth_mode_the_user_set_is_kept(fake, monkeypatch: pytest.MonkeyPatch, mode: str, token: bool) -> None:
    _, switched = fake
    monkeypatch.setenv(cluster.AUTH_MODE_ENV, mode)
    assert cluster.use_token_auth_if_available(None) is token and switched == []
    assert os.environ[cluster.AUTH_MODE_ENV] == mode


def test_nothing_listening_is_no_cluster_at_once_without_waiting_for_ray(fake) -> None:
    ray, _ = fake
    port = _closed_port()
    with pytest.raises(ClusterUnavailableError, match=rf"127.0.0.1:{port}.*nothing listens.*ray start --head"):
        cluster.join_or_start(f"127.0.0.1:{port}")
    assert ray.inits == []


def test_ray_address_stands_for_auto(fake, monkeypatch: pytest.MonkeyPatch) -> None:
    port = _closed_port()
    monkeypatch.setenv(cluster.ADDRESS_ENV, f"127.0.0.1:{port}")
    with pytest.raises(ClusterUnavailableError, match=f"'127.0.0.1:{port}'"):
        cluster.join_or_start("auto")


def test_a_running_cluster_that_refuses_us_is_told_apart_from_none(fake, listener: int) -> None:
    ray, _ = fake
    ray.fail = ConnectionError(f"Failed to connect to Ray cluster at 127.0.0.1:{listener}")
    with pytest.raises(ClusterUnavailableError, match=rf"is running at 127.0.0.1:{listener} but refused this "
                                                      rf"process.*RAY_AUTH_MODE=token") as info:
        cluster.join_or_start("auto")
    assert isinstance(info.value.__cause__, ConnectionError)


def test_with_token_mode_on_a_refusal_points_at_the_token(fake, monkeypatch: pytest.MonkeyPatch, listener: int) -> None:
    monkeypatch.setenv(cluster.AUTH_MODE_ENV, "token")
    err = cluster.join_error("auto", ConnectionError(f"Failed to connect to Ray cluster at 127.0.0.1:{listener}"))
    assert "did not accept this process's token" in str(err) and "~/.ray/auth_token" in str(err)


def test_auto_with_no_cluster_anywhere_says_so(fake) -> None:
    ray, _ = fake
    ray.fail = ConnectionError("Could not find any running Ray instance. Please specify the one to connect to")
    with pytest.raises(ClusterUnavailableError, match="'auto': no Ray cluster is running there .*ray start --head"):
        cluster.join_or_start("auto")

