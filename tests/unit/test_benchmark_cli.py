"""Smoke test: the datapath benchmark's command line parses and documents itself (nothing is run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "datapath.py"


def test_help_runs() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for flag in ("--quick", "--markdown", "--repeats", "--duration", "--patch-size", "--batch-size"):
        assert flag in out.stdout


def test_quick_and_markdown_section(tmp_path: Path) -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import datapath
    finally:
        sys.path.remove(str(SCRIPT.parent))
    args = datapath.parse_args(["--quick"])
    assert args.duration < 5 and args.consumers == [1, 2] and args.monai_consumers == [1]
    assert datapath.parse_args([]).patch_size == 96 and datapath.parse_args([]).batch_size == 2
    doc = tmp_path / "bench.md"
    doc.write_text("# Title\n\nprose\n")
    datapath.write_markdown(doc, "table one")
    datapath.write_markdown(doc, "table two")
    text = doc.read_text()
    assert text.startswith("# Title\n\nprose\n") and "table two" in text and "table one" not in text
