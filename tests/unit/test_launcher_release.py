"""``smartcache train`` releases its registration on every error path after it registered (no Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from common.config import config_from_dict
from common.demo_data import make_demo_data
from common.errors import DataError
from trainer import launcher


class _Exp:
    id = "t-abc123"

    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


class _Cache:
    fingerprint = "fp"


def _broken_statistics(*args: Any, **kwargs: Any) -> Any:
    raise DataError("stats.json", "corrupt statistics file")


@pytest.mark.parametrize("failing", ["build_preprocessor", "in_channels_of", "_start_validator"])
def test_an_error_after_registering_closes_the_experiment(failing: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_demo_data(tmp_path / "data", cases=4, size=16)
    cfg = config_from_dict({"data": {"dataset_dir": str(data), "val_fraction": 0.5},
                            "cache": {"stats_dir": str(tmp_path / "stats")}})
    exp = _Exp()
    monkeypatch.setattr(launcher, "check_fits_cluster", lambda cfg, in_process: None)
    monkeypatch.setattr(launcher, "_open_experiment", lambda *a, **k: (_Cache(), exp, 0.0))
    if failing != "build_preprocessor":
        monkeypatch.setattr(launcher, "build_preprocessor", lambda *a, **k: object())
    monkeypatch.setattr(launcher, failing, _broken_statistics)
    with pytest.raises(DataError, match="corrupt statistics"):
        launcher.run_experiment(cfg, launcher.LaunchOptions(tmp_path / "out", show_progress=False))
    assert exp.closed == 1
