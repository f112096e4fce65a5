"""The typed handle's error mapping, without Ray: service errors as themselves, Ray's as CacheUnavailableError."""

from __future__ import annotations

from typing import Any

import pytest
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

import cache_service.handle as handle_module
from cache_service.handle import CacheHandle
from common.errors import CacheUnavailableError, UnknownItemError


class Method:
    """``actor.<method>`` stand-in: ``.remote(...)`` records the arguments and returns them as the 'ref'."""

    def __init__(self, name: str, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> None:
        self.name, self.calls = name, calls

    def remote(self, *args: Any, **kwargs: Any) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
        self.calls.append((self.name, args, kwargs))
        return self.name, args, kwargs


class FakeActor:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Method:
        return Method(name, self.calls)


def _with_get(monkeypatch: pytest.MonkeyPatch, answer: Any) -> list[float]:
    timeouts: list[float] = []

    def get(ref: Any, timeout: float) -> Any:
        timeouts.append(timeout)
        if isinstance(answer, BaseException):
            raise answer
        return answer(ref) if callable(answer) else answer
    monkeypatch.setattr(handle_module.ray, "get", get)
    return timeouts


def test_each_method_sends_its_own_actor_call_with_the_handles_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    timeouts = _with_get(monkeypatch, lambda ref: 1.5 if ref[0] == "get_ratio" else True)
    actor = FakeActor()
    h = CacheHandle(actor, "smartcache-ab", timeout_s=7)  # type: ignore[arg-type]
    assert h.get_ratio("e") == 1.5 and h.report_progress("e", 3, {"loss": 0.1}) is True
    h.snapshot("e", epoch=2)
    h.publish_sampler("e", 2.0, 0.1, 0.2, (0.9,), 0.9, 4)
    h.stop()
    assert actor.calls == [("get_ratio", ("e",), {}), ("report_progress", ("e", 3, {"loss": 0.1}), {}),
                           ("snapshot", ("e",), {"epoch": 2}),
                           ("publish_sampler", ("e", 2.0, 0.1, 0.2, [0.9], 0.9, 4), {}), ("stop", (), {})]
    assert timeouts == [7, 7, 7, 7, handle_module.STOP_TIMEOUT_S]


def test_a_service_error_comes_back_as_itself_with_the_ray_error_as_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    raised = RayTaskError("get_ratio", "Traceback ...", UnknownItemError("experiment", "nobody"))
    _with_get(monkeypatch, raised)
    with pytest.raises(UnknownItemError, match="nobody") as info:
        CacheHandle(FakeActor(), "smartcache-ab").get_ratio("nobody")  # type: ignore[arg-type]
    assert info.value.__cause__ is raised


def test_a_bug_in_the_actor_stays_a_ray_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_get(monkeypatch, RayTaskError("status", "Traceback ...", ZeroDivisionError("oops")))
    with pytest.raises(RayTaskError):
        CacheHandle(FakeActor(), "smartcache-ab").status()  # type: ignore[arg-type]


@pytest.mark.parametrize("err, words", [(RayActorError(), "died or was stopped"),
                                        (GetTimeoutError(), "no answer to val_snapshot\\(\\) within 3s")])
def test_a_dead_or_silent_actor_is_cache_unavailable(monkeypatch: pytest.MonkeyPatch, err: BaseException,
                                                     words: str) -> None:
    _with_get(monkeypatch, err)
    with pytest.raises(CacheUnavailableError, match=f"smartcache-ab.*{words}") as info:
        CacheHandle(FakeActor(), "smartcache-ab", timeout_s=3).val_snapshot()  # type: ignore[arg-type]
    assert info.value.__cause__ is err


def test_a_misspelt_method_fails_here_not_on_the_actor() -> None:
    h = CacheHandle(FakeActor(), "smartcache-ab")  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        h.statsu()  # type: ignore[attr-defined]
    assert h.actor.calls == []
