"""Size and import habits of the packages (STYLE.md "Habits"), checked so they stay true.

No package file over 300 lines, no function over 60 (benchmarks/ are outside the packages),
and a function-local import only with a comment saying which heavy package it keeps out of
which process (a run of adjacent imports shares the first one's comment).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "cache_service", "trainer")
MAX_FILE_LINES = 300
MAX_FUNCTION_LINES = 60


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _import_runs(func: ast.AST) -> list[list[ast.stmt]]:
    """Runs of adjacent import statements in every statement list inside ``func``."""
    runs: list[list[ast.stmt]] = []
    for node in ast.walk(func):
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            run: list[ast.stmt] = []
            for stmt in stmts if isinstance(stmts, list) else []:
                if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                    run.append(stmt)
                    continue
                if run:
                    runs.append(run)
                run = []
            if run:
                runs.append(run)
    return runs


def test_no_package_file_is_over_300_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in _sources() if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert not long, f"split these (one concept per module, at most {MAX_FILE_LINES} lines): {long}"


def test_no_function_is_over_60_lines() -> None:
    long = {f"{p.relative_to(ROOT)}:{f.lineno} {f.name}": f.end_lineno - f.lineno + 1
            for p in _sources() for f in _functions(ast.parse(p.read_text()))
            if f.end_lineno is not None and f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES}
    assert not long, f"split these (at most {MAX_FUNCTION_LINES} lines): {long}"


def test_every_function_local_import_says_why() -> None:
    bare = []
    for p in _sources():
        lines = p.read_text().splitlines()
        for func in _functions(ast.parse("\n".join(lines))):
            for run in _import_runs(func):
                if "#" not in lines[run[0].lineno - 1]:
                    bare.append(f"{p.relative_to(ROOT)}:{run[0].lineno}: {lines[run[0].lineno - 1].strip()}")
    assert not bare, ("move these imports to the top, or say in a comment which heavy package they keep out "
                      f"of which process: {bare}")
