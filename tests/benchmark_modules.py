"""Import scripts from benchmarks/ (not a package) in tests, without leaving the folder on sys.path."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def import_benchmarks(*names: str) -> tuple[ModuleType, ...]:
    """The named benchmark modules; their own imports of each other resolve while the folder is on the path."""
    sys.path.insert(0, str(BENCH))
    try:
        return tuple(importlib.import_module(name) for name in names)
    finally:
        sys.path.remove(str(BENCH))
