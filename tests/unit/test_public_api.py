"""The public API: what it exports, that the cache actor's process stays free of torch, and that the
project's own trainer goes through it (no string-named actor calls outside the protocol module)."""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys
from pathlib import Path

import cache_service
import cache_service.sdk as sdk
from cache_service.sdk import ConsumerSettings, Experiment

ROOT = Path(__file__).resolve().parents[2]


def test_exports_are_documented_and_resolvable() -> None:
    for name in sdk.__all__:
        obj = getattr(sdk, name)
        assert obj.__doc__, name
    assert cache_service.SmartCache is sdk.SmartCache and cache_service.CropDataset is sdk.CropDataset


def test_cache_actor_modules_do_not_import_torch() -> None:
    code = ("import sys, cache_service, cache_service.actor, cache_service.registry; "
            "print('torch' in sys.modules, 'monai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]


def _actor_method_calls(path: Path) -> list[str]:
    """Names passed as strings to client.call(...) or used as handle.method.remote(...) in a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)):
            fname = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            if fname in ("call", "_call") and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                found.append(node.args[1].value)
    return found


def test_trainer_goes_through_the_public_api() -> None:
    worker = (ROOT / "trainer" / "worker.py").read_text()
    tree = ast.parse(worker)
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "cache_service.sdk" in imported
    assert not {m for m in imported if m and m.startswith("cache_service") and m != "cache_service.sdk"}
    assert "exp.batches(" in worker and "exp.finish_epoch(" in worker
    for module in ("trainer/worker.py", "trainer/launcher.py", "trainer/validation_service.py"):
        assert _actor_method_calls(ROOT / module) == [], module
    experiment_calls = {"register", "snapshot", "report_progress", "publish_sampler", "unregister", "val_snapshot"}
    assert experiment_calls <= set(_actor_method_calls(ROOT / "cache_service" / "sdk" / "protocol.py"))


def test_an_experiment_pickles_for_ray_train_workers_without_detaching() -> None:
    exp = Experiment("fp", "ns", "e-1", ConsumerSettings(batch_size=3), num_classes=3, info={"lr": 1e-3})
    exp._owner = True
    copy = pickle.loads(pickle.dumps(exp))
    assert copy.id == "e-1" and copy.settings.batch_size == 3 and copy.num_classes == 3
    copy.close()  # a worker's copy never unregisters (it would need the actor; it must not even try)
    assert copy._cache is None


def test_api_reference_is_rendered_from_the_current_docstrings() -> None:
    done = subprocess.run([sys.executable, "docs/render_api.py", "--check"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
