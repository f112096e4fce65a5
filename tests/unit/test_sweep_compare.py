"""The sweep benchmark's bookkeeping (nothing is trained): the table, the targets, the markdown section,
and each trial's time to first step read back from its metrics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.benchmark_modules import import_benchmarks


@pytest.fixture(scope="module")
def bench():
    return import_benchmarks("sweep_arms", "sweep_compare")


def _run(arms, arm: str, wall: float, peak_mib: int, prep: float | None) -> object:
    rows = [arms.TrialRow(0, {"training.lr": 1e-3}, 12.4, 0.61, 40), arms.TrialRow(1, {}, None, None, 0)]
    return arms.ArmRun(arm, wall, rows, prep, peak_mib * 2 ** 20, 100 * 2 ** 20, 50 * 2 ** 20, (1.0, 2.5))


def test_table_and_targets(bench) -> None:
    arms, compare = bench
    shared, monai = _run(arms, arms.SHARED, 100.0, 500, 30.0), _run(arms, arms.MONAI, 250.0, 1800, None)
    table = compare.format_table([shared, monai])
    assert "| (a) smartcache sweep, one shared cache | 100 | 12 / - | 30.0 | 500 (100) | 50 | 0.610 / - |" in table
    assert "| not measured |" in table and "1.0 / 2.5" in table
    met = compare.target_lines([shared, monai])
    assert "**met** (100 s vs 250 s = 2.50x sooner)" in met[0] and "**met**" in met[1]
    slow = _run(arms, arms.SHARED, 200.0, 700, 30.0)
    missed = compare.target_lines([slow, monai])
    assert "**MISSED**" in missed[0] and "**MISSED**" in missed[1] and "0.39x of (b)" in missed[1]
    assert "not checked" in compare.target_lines([shared])[0]


def test_markdown_section_goes_under_time_to_dice_then_is_replaced(bench, tmp_path: Path) -> None:
    _, compare = bench
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Data path\n\ntext\n\n# Time to target Dice: three arms\n\nold table\n\n# NovoGrad\n\nmore\n")
    compare.write_markdown(doc, "first run")
    text = doc.read_text()
    assert text.index("old table") < text.index("first run") < text.index("# NovoGrad")
    assert text.count(compare.MARK_BEGIN) == 1
    compare.write_markdown(doc, "second run")
    text = doc.read_text()
    assert "second run" in text and "first run" not in text and text.count(compare.MARK_END) == 1
    assert text.endswith("# NovoGrad\n\nmore\n")
    other = tmp_path / "other.md"
    other.write_text("# Something else\n")
    compare.write_markdown(other, "x")
    assert other.read_text() == f"# Something else\n\n{compare.MARK_BEGIN}\nx\n{compare.MARK_END}\n"


def test_first_step_from_the_earliest_first_batch_of_rank_0(bench, tmp_path: Path) -> None:
    arms, _ = bench
    rows = [{"kind": "train", "rank": 0, "epoch": 0, "steps": 5, "first_batch_at": 1010.0},
            {"kind": "train", "rank": 1, "epoch": 0, "steps": 5, "first_batch_at": 1005.0},
            {"kind": "train", "rank": 0, "epoch": 1, "steps": 5, "first_batch_at": 1020.0},
            {"kind": "validation", "epoch": 1, "mean_dice": 0.5}]
    (tmp_path / "t0").mkdir()
    (tmp_path / "t0" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert arms.first_steps(tmp_path, ["t0", "missing"], 1000.0) == [(10.0, 10), (None, 0)]


def test_quick_and_default_regime(bench) -> None:
    _, compare = bench
    quick = compare.parse_args(["--data", "d", "--quick", "--set", "cache.cache_num=4"])
    assert (quick.trials, quick.trials_epochs, quick.steps_per_epoch) == (2, 2, 3)
    assert quick.overrides[-1] == "cache.cache_num=4"  # the user's --set wins over the quick defaults
    full = compare.parse_args(["--data", "d"])
    assert (full.trials, full.trials_epochs, full.steps_per_epoch, full.concurrent) == (4, 4, 10, 2)
    sets = compare.base_overrides(full)
    assert "training.target_dice=1.0" in sets and "training.steps_per_epoch=10" in sets
    assert "training.deterministic=true" in sets  # no validation skipped: the same schedule in every arm


def test_children_cpu_counts_live_and_reaped_child_processes(bench) -> None:
    """The no-cache arm's preparation CPU: what a Ray worker's DataLoader processes used, before and after exit."""
    import subprocess
    import time

    import psutil

    arms, _ = bench
    me = psutil.Process()
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\nimport sys; sys.stdin.read()"
    before = arms._children_cpu(me)
    child = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE)
    deadline = time.time() + 20
    while arms._children_cpu(me) - before < 0.35 and time.time() < deadline:  # live: read from the child
        time.sleep(0.05)
    live = arms._children_cpu(me) - before
    child.communicate(b"")  # let it exit; reaped, its CPU moves to this process's children times
    reaped = arms._children_cpu(me) - before
    assert live >= 0.35 and reaped >= live - 0.01
