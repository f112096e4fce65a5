"""The public API: what it exports, that the cache actor's process stays free of torch, that the
project's own trainer goes through it, and that no package calls an actor by a method-name string
(every call goes through the typed handle, cache_service/handle.py)."""

from __future__ import annotations

import ast
import inspect
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import cache_service
import cache_service.sdk as sdk
from cache_service.actor import SmartCacheService
from cache_service.handle import CacheCalls, CacheHandle
from cache_service.recovery import ResilientCache
from cache_service.sdk import ConsumerSettings, Experiment

ROOT = Path(__file__).resolve().parents[2]


def test_exports_are_documented_and_resolvable() -> None:
    for name in sdk.__all__:
        obj = getattr(sdk, name)
        assert obj.__doc__, name
    assert cache_service.SmartCache is sdk.SmartCache and cache_service.CropDataset is sdk.CropDataset


def test_cache_actor_modules_do_not_import_torch() -> None:
    """Nor pyarrow: the actor never reads the disk tier (its tasks do), and each import delays its start."""
    code = ("import sys, cache_service, cache_service.actor, cache_service.registry; "
            "print('torch' in sys.modules, 'monai' in sys.modules, 'pyarrow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False", "False"]


PACKAGES = ("common", "cache_service", "trainer")
CALL_NAMES = {"call", "_call"}


def _callee(node: ast.Call) -> str | None:
    return node.func.id if isinstance(node.func, ast.Name) else \
        node.func.attr if isinstance(node.func, ast.Attribute) else None


def _is_getattr(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and _callee(node) == "getattr" and len(node.args) >= 2 and \
        not (isinstance(node.args[1], ast.Constant) and not isinstance(node.args[1].value, str))


def string_named_actor_calls(source: str) -> list[str]:
    """Every form of an actor call by method-name string in ``source``, as "line: form".

    - ``getattr(x, "m").remote(...)`` / ``getattr(x, name).options(...)`` (constant or variable name)
    - ``x.call("m", ...)``, ``call(handle, "m", ...)``, ``_call(x, "m", ...)``, ``call(handle, method)``
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in ("remote", "options") and _is_getattr(node.value):
            found.append(f"{node.lineno}: getattr(...).{node.attr}")
        if isinstance(node, ast.Call) and _callee(node) in CALL_NAMES:
            named = [a for a in node.args[:2] if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            by_variable = isinstance(node.func, ast.Name) and len(node.args) >= 2 and isinstance(node.args[1], ast.Name)
            if named or by_variable:
                found.append(f"{node.lineno}: {_callee(node)}(... method name ...)")
    return found


def test_no_string_named_actor_call_anywhere_in_the_packages() -> None:
    offenders = {str(path.relative_to(ROOT)): hits for package in PACKAGES
                 for path in sorted((ROOT / package).rglob("*.py"))
                 if (hits := string_named_actor_calls(path.read_text()))}
    assert offenders == {}


BAD_SOURCES = {
    "getattr_constant": 'ray.get(getattr(handle, "status").remote())',
    "getattr_variable": "ray.get(getattr(handle, method).remote(*args))",
    "getattr_options": 'getattr(handle, "snapshot").options(num_returns=2).remote("e")',
    "method_call": 'self.cache.call("val_snapshot")',
    "client_call": 'client.call(handle, "register", "e", {})',
    "bare_call": 'call(handle, "status", timeout_s=5)',
    "private_call": '_call(cache, "report_progress", "e", 0)',
    "call_by_variable": "call(handle, method, *args)",
}


@pytest.mark.parametrize("form", sorted(BAD_SOURCES))
def test_the_guard_finds_each_form_of_a_string_named_call(form: str) -> None:
    assert len(string_named_actor_calls(BAD_SOURCES[form])) == 1, BAD_SOURCES[form]


def test_the_guard_passes_typed_calls() -> None:
    typed = textwrap.dedent("""
        handle.status()
        ray.get(actor.status.remote(), timeout=5)
        cache.snapshot("exp", epoch=3)
        getattr(sdk, name)
        getattr(self, name) >= 0
        subprocess.call(["ls"])
    """)
    assert string_named_actor_calls(typed) == []


def _public_methods(cls: type) -> set[str]:
    return {n for n, v in vars(cls).items() if not n.startswith("_") and inspect.isfunction(v)}


def test_the_handle_has_one_typed_method_per_actor_method() -> None:
    actor = _public_methods(SmartCacheService)
    assert _public_methods(CacheHandle) == actor
    assert _public_methods(ResilientCache) >= actor
    assert {n for n in vars(CacheCalls) if not n.startswith("_") and callable(vars(CacheCalls)[n])} == actor


def test_trainer_goes_through_the_public_api() -> None:
    worker = (ROOT / "trainer" / "worker.py").read_text()
    tree = ast.parse(worker)
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "cache_service.sdk" in imported
    assert not {m for m in imported if m and m.startswith("cache_service") and m != "cache_service.sdk"}
    assert "exp.batches(" in worker and "exp.finish_epoch(" in worker
    protocol = ast.parse((ROOT / "cache_service" / "sdk" / "protocol.py").read_text())
    on_cache = {n.func.attr for n in ast.walk(protocol) if isinstance(n, ast.Call) and
                isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name) and n.func.value.id == "cache"}
    experiment_calls = {"register", "snapshot", "report_progress", "publish_sampler", "unregister", "val_snapshot"}
    assert experiment_calls <= on_cache <= _public_methods(CacheHandle)


def test_an_experiment_pickles_for_ray_train_workers_without_detaching() -> None:
    exp = Experiment("fp", "ns", "e-1", ConsumerSettings(batch_size=3), num_classes=3, info={"lr": 1e-3})
    exp._owner_pid = os.getpid()
    assert exp._owner
    copy = pickle.loads(pickle.dumps(exp))
    assert copy.id == "e-1" and copy.settings.batch_size == 3 and copy.num_classes == 3
    copy.close()  # a worker's copy never unregisters (it would need the actor; it must not even try)
    assert copy._cache is None


def test_api_reference_is_rendered_from_the_current_docstrings() -> None:
    done = subprocess.run([sys.executable, "docs/render_api.py", "--check"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
