"""The layers as import-linter contracts (pyproject.toml): kept on the real tree, broken by a wrong arrow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli, which import-linter itself depends on there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")  # the venv's own, beside its python
PACKAGES = ("common", "cache_service", "trainer")


def _contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports on the packages found first on the path from ``cwd`` (and its pyproject.toml)."""
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_contracts_are_kept() -> None:
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    for contract in _contracts().values():
        assert f"{contract['name']} KEPT" in " ".join(done.stdout.split()), contract["id"]


def test_every_service_module_has_a_place_in_the_layers() -> None:
    """A new module of cache_service/ must be classified (SDK, REST API or internal), else no contract sees it."""
    children = {f"cache_service.{p.stem}" for p in (ROOT / "cache_service").iterdir()
                if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    contracts = _contracts()
    internals = set(contracts["internals"]["source_modules"])
    assert children == internals | {"cache_service.sdk", "cache_service.api"}
    middle = {m.strip() for m in contracts["layers"]["layers"][2].replace("\\", "").split(":")}
    assert middle == internals | {"cache_service.api"}


def _copy_tree(tmp: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp / "pyproject.toml")
    return tmp


def _add_import(path: Path, line: str) -> None:
    text = path.read_text()
    head, sep, rest = text.partition("from __future__ import annotations\n")
    path.write_text(head + sep + line + "\n" + rest if sep else line + "\n" + text)


def test_a_wrong_arrow_breaks_the_contract_that_names_it(tmp_path: Path) -> None:
    tree = _copy_tree(tmp_path)
    _add_import(tree / "cache_service" / "pool.py", "import trainer.model")  # an internal importing the app
    _add_import(tree / "common" / "sampling.py", "import ray")  # the pure core importing Ray
    _add_import(tree / "cache_service" / "api" / "views.py", "import cache_service.sdk.stream")  # REST -> SDK
    done = _lint(tree)
    out = " ".join(done.stdout.split())
    assert done.returncode == 1, out
    contracts = _contracts()
    for contract_id in ("core", "internals", "rest-api", "layers"):
        assert f"{contracts[contract_id]['name']} BROKEN" in out, contract_id
    assert "cache_service.pool -> trainer.model" in out and "common.sampling -> ray" in out
    assert "cache_service.api.views -> cache_service.sdk.stream" in out
    assert "Contracts: 0 kept, 4 broken." in out


def test_the_sdk_importing_the_trainer_breaks_the_layers(tmp_path: Path) -> None:
    tree = _copy_tree(tmp_path)
    _add_import(tree / "cache_service" / "sdk" / "stream.py", "import trainer.staging")
    done = _lint(tree)
    out = " ".join(done.stdout.split())
    assert done.returncode == 1, out
    assert f"{_contracts()['layers']['name']} BROKEN" in out
    assert "cache_service.sdk.stream -> trainer.staging" in out and "Contracts: 3 kept, 1 broken." in out
