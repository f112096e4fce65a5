"""Experiment ids: one rule at the SDK, the CLI/launcher and the REST API; run folders stay inside --out."""

from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from cache_service.api import create_app
from cache_service.api.samples import cache_status
from cache_service.api.source import InMemorySource
from cache_service.sdk import SmartCache
from common.config import load_config
from common.errors import InvalidIdError
from common.ids import MAX_ID_LENGTH, check_experiment_id, contained_folder
from trainer.launcher import LaunchOptions, run_experiment

LOOPBACK = "http://127.0.0.1"  # the API answers loopback Host headers only (DNS rebinding)

HOSTILE = ["../../../escaped", "a/b", "..", "a..b", "/abs", "-flag", ".hidden", "x" * (MAX_ID_LENGTH + 1),
           "tab\there", "esc\x1b[31m", "", "naïve", "a b"]


@pytest.mark.parametrize("good", ["spleen", "spleen-a1b2c3", "run_1.v2", "A", "9" * MAX_ID_LENGTH])
def test_safe_ids_pass_unchanged(good):
    assert check_experiment_id(good) == good


@pytest.mark.parametrize("bad", HOSTILE)
def test_unsafe_ids_are_refused_naming_the_id_and_the_rule(bad):
    with pytest.raises(InvalidIdError) as info:
        check_experiment_id(bad)
    assert repr(bad) in str(info.value) and f"1 to {MAX_ID_LENGTH} characters of A-Z a-z 0-9 . _ -" in str(info.value)


def test_contained_folder_refuses_a_symlink_out_of_the_root(tmp_path):
    root, outside = tmp_path / "state", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    assert contained_folder(root, "exp-1") == (root / "exp-1").resolve()
    (root / "exp-2").symlink_to(outside)
    with pytest.raises(InvalidIdError, match="lies outside"):
        contained_folder(root, "exp-2")


def test_the_sdk_refuses_a_hostile_experiment_name():
    cfg = load_config(None, [])
    nothing_prepared = SimpleNamespace(status=lambda: SimpleNamespace(train_shapes={}, train_items=0, quarantined=[]))
    cache = SmartCache(cfg, SimpleNamespace(num_classes=2, train=()), "ab12", handle=nothing_prepared)
    with pytest.raises(InvalidIdError, match="'../../../escaped-[0-9a-f]{6}' is invalid"):
        cache.experiment("../../../escaped")
    with pytest.raises(InvalidIdError, match="is invalid"):
        cache.experiment("x" * MAX_ID_LENGTH)  # fits alone, not with the unique suffix
    assert cache.experiment("fine", unique=False).id == "fine"


def test_the_cli_refuses_a_hostile_config_name_before_writing_anything(tmp_path):
    out = tmp_path / "deep" / "er" / "out"
    cfg = load_config(None, ["name=../../../escaped", f"data.dataset_dir={tmp_path / 'missing'}"])
    with pytest.raises(InvalidIdError, match="experiment name \\(config field 'name'\\) '../../../escaped'"):
        run_experiment(cfg, LaunchOptions(out_dir=out, show_progress=False))
    written = [p for p in tmp_path.rglob("*")]
    assert written == []  # no state.pt, validator.json or best_weights.pt anywhere, inside --out or out of it


def test_the_api_refuses_unsafe_ids_with_the_rule():
    client = TestClient(create_app(InMemorySource([cache_status()])), base_url=LOOPBACK)
    for bad in ("..escaped", "a..b", "x" * 300, "%1b%5B31m", "-rf"):
        for suffix in ("", "/sampler"):
            r = client.get(f"/experiments/{bad}{suffix}")
            assert r.status_code == 422, (bad, r.status_code)
            assert "characters of A-Z a-z 0-9" in r.json()["detail"]
    assert client.get("/experiments/..%2F..%2Fetc").status_code == 404  # a '/' never reaches the route
    assert client.get("/experiments/spleen-a1b2c3").status_code == 200
