"""Validation on a CPU node yields the cores to training: its threads run at ``validation.cpu_niceness``."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from common.catalog import fingerprint, load_catalog
from common.config import config_from_dict
from common.demo_data import make_demo_data
from common.preprocess import build_preprocessor
from trainer.model import build_model
from common.niceness import lower_priority, niceness_of_this_thread, run_lowered
from trainer.validation_service import ValidationService
from trainer.validator_link import LocalValidator

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")


def _in_thread(fn) -> int:
    out: list[int] = []
    t = threading.Thread(target=lambda: (fn(), out.append(niceness_of_this_thread())))
    t.start()
    t.join()
    return out[0]


def test_a_thread_is_lowered_and_the_caller_keeps_its_priority() -> None:
    before = niceness_of_this_thread()
    assert _in_thread(lambda: lower_priority(before + 7)) == before + 7
    assert niceness_of_this_thread() == before


def test_zero_leaves_the_priority_and_a_higher_niceness_is_kept() -> None:
    base = niceness_of_this_thread()
    assert _in_thread(lambda: lower_priority(0)) == base
    assert _in_thread(lambda: (lower_priority(base + 9), lower_priority(base + 3))) == base + 9


def test_the_whole_process_is_lowered_threads_started_before_and_after() -> None:
    code = (
        "import os, threading, time\n"
        "from common.niceness import lower_priority, niceness_of_this_thread, run_lowered\n"
        "ev = threading.Event(); seen = []\n"
        "t = threading.Thread(target=lambda: (ev.wait(), seen.append(niceness_of_this_thread()))); t.start()\n"
        "time.sleep(0.05)\n"
        "base = os.getpriority(os.PRIO_PROCESS, 0)\n"
        "lower_priority(base + 5, whole_process=True); ev.set(); t.join()\n"
        "later = []; u = threading.Thread(target=lambda: later.append(niceness_of_this_thread())); u.start(); u.join()\n"
        "print(seen[0] - base, later[0] - base, niceness_of_this_thread() - base)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert out.stdout.split() == ["5", "5", "5"]


@pytest.mark.parametrize(("use_gpu", "raised_by"), [(False, 6), (True, 0)])
def test_in_process_validation_runs_lowered_on_cpu_only(tmp_path: Path, use_gpu: bool, raised_by: int) -> None:
    """The trainer's thread keeps its priority; the validation thread of a CPU run is lowered (a GPU run's
    validation is not: its work is on the GPU, and the host threads feed it)."""
    data = make_demo_data(tmp_path / "data", cases=4, size=24)
    cfg = config_from_dict({"data": {"dataset_dir": str(data), "val_fraction": 0.25},
                            "validation": {"roi_size": [16, 16, 16], "cpu_niceness": 6},
                            "sampler": {"patch_size": [16, 16, 16]},
                            "training": {"channels": [4, 8], "strides": [2]}})
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"use_gpu": use_gpu})})
    catalog = load_catalog(data, cfg.data)
    prep = build_preprocessor(catalog, cfg.preprocessing, cfg.sampler.patch_size, None, "fp")
    service = ValidationService(cfg, fingerprint(catalog, cfg.preprocessing), "nice-1", catalog.num_classes, 1,
                                time.time(), str(tmp_path / "state"), own_volumes=(list(catalog.val), prep))
    seen: list[int] = []
    run = service.validator.validate
    service.validator.validate = lambda *a: (seen.append(niceness_of_this_thread()), run(*a))[1]
    link = LocalValidator(service)
    base = niceness_of_this_thread()
    weights = build_model(cfg.training, 1, catalog.num_classes).state_dict()
    row = link.validate(0, weights, 0.0).result()
    link.close()
    assert row["epoch"] == 0 and seen == [base + raised_by]
    assert niceness_of_this_thread() == base


def test_run_lowered_returns_and_raises_from_a_lowered_thread() -> None:
    base = niceness_of_this_thread()
    assert run_lowered(4, niceness_of_this_thread) == base + 4
    assert run_lowered(0, niceness_of_this_thread) == base  # 0: in the calling thread
    with pytest.raises(ValueError, match="bad volume"):
        run_lowered(4, lambda: (_ for _ in ()).throw(ValueError("bad volume")))
    assert niceness_of_this_thread() == base
