"""Smoke test: the datapath benchmark's command line parses and documents itself (nothing is run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.benchmark_modules import import_benchmarks

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "datapath.py"


def test_help_runs() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for flag in ("--quick", "--markdown", "--repeats", "--duration", "--patch-size", "--batch-size"):
        assert flag in out.stdout


def test_quick_and_markdown_section(tmp_path: Path) -> None:
    (datapath,) = import_benchmarks("datapath")
    args = datapath.parse_args(["--quick"])
    assert args.duration < 5 and args.consumers == [1, 2] and args.monai_consumers == [1]
    assert datapath.parse_args([]).patch_size == 96 and datapath.parse_args([]).batch_size == 2
    doc = tmp_path / "bench.md"
    doc.write_text("# Title\n\nprose\n")
    datapath.write_markdown(doc, "table one")
    datapath.write_markdown(doc, "table two")
    text = doc.read_text()
    assert text.startswith("# Title\n\nprose\n") and "table two" in text and "table one" not in text


def test_render_uses_the_fast_recipe_as_reference() -> None:
    (datapath,) = import_benchmarks("datapath")
    args = datapath.parse_args([])
    args.load_start = (1.0, 1.0, 1.0)
    mib = datapath.MiB
    rows = [datapath.Row("D", "numpy crop copy (ceiling)", 1, [900.0], busy=[3.0]),
            datapath.Row("D", datapath.SERVICE, 1, [720.0], mem_bytes=110 * mib, store_bytes=100 * mib),
            datapath.Row("D", datapath.SERVICE, 4, [1000.0], mem_bytes=125 * mib, store_bytes=100 * mib),
            datapath.Row("D", datapath.MONAI_FAST, 1, [400.0], mem_bytes=150 * mib),
            datapath.Row("D", datapath.MONAI_FAST, 4, [800.0], mem_bytes=600 * mib)]
    info = {"cases": 2, "shapes": [(10, 10, 10)], "cache_bytes": 100 * mib, "cache_build_s": 1.0}
    text = datapath.render(rows, {"D": info}, args, 60.0)
    assert "| SmartCache actor + CropBatchStream | 1 | 720.0 | 1.80x | 0.80 |" in text
    assert "| SmartCache actor + CropBatchStream | 4 | 1000.0 | 1.25x |" in text
    assert "crops/s per consumer >= 1.8x MONAI fast recipe: **met** (720 vs 400 crops/s = 1.80x)" in text
    assert "memory with 4 consumers <= 1.2x one copy: **MISSED** (1.250x)" in text
    assert "Load average" in text


def _datapath():
    (datapath,) = import_benchmarks("datapath")
    return datapath


def test_sdk_rows_are_checked_against_the_fast_recipe_with_the_same_chain() -> None:
    datapath = _datapath()
    args = datapath.parse_args([])
    args.load_start = (1.0, 1.0, 1.0)
    rows = [datapath.Row("D", datapath.MONAI_FAST, 1, [400.0]),
            datapath.Row("D", f"{datapath.SDK} (project chain)", 1, [760.0]),
            datapath.Row("D", f"{datapath.SDK} (user chain)", 1, [500.0]),
            datapath.Row("D", datapath.MONAI_FAST_USER, 1, [250.0])]
    info = {"cases": 2, "shapes": [(10, 10, 10)], "cache_bytes": datapath.MiB, "cache_build_s": 1.0}
    text = datapath.render(rows, {"D": info}, args, 60.0)
    assert f"| {datapath.SDK} (user chain) | 1 | 500.0 | 2.00x |" in text  # divided by the user-chain recipe
    assert "public SDK (project chain) per consumer >= 1.8x MONAI fast recipe: **met** (760 vs 400" in text
    assert ("public SDK (user chain) per consumer >= 1.8x MONAI fast recipe with the same user chain: **met** "
            "(500 vs 250 crops/s = 2.00x)") in text


def test_private_pss_leaves_shared_memory_out() -> None:
    """The object store is shared memory, counted by its bytes; its pages must not count again in the PSS.

    Measured in a fresh interpreter: in the test process, threads left by earlier tests (Ray's, a
    session's) allocate between the two readings and would be counted as growth.
    """
    probe = """
import mmap, os, sys
sys.path.insert(0, "benchmarks")
from datapath import MiB, private_pss
size = 64 * MiB
before = private_pss(os.getpid())
shared = mmap.mmap(-1, size, flags=mmap.MAP_SHARED)  # anonymous shared: shmem, as the object store's pages
shared.write(b"x" * size)
grown_shared = private_pss(os.getpid()) - before
private = bytearray(b"y" * size)
print(grown_shared / MiB, (private_pss(os.getpid()) - before) / MiB, len(private) == size)
"""
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=repo, timeout=60)
    assert done.returncode == 0, done.stderr
    grown_shared, grown_private, whole = done.stdout.split()
    assert float(grown_shared) < 8
    assert float(grown_private) > 48 and whole == "True"
