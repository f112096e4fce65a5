"""``GET /sweeps``, the sweep gauges of ``/metrics`` and the dashboard's sweep section, on in-memory statuses."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from cache_service.api import ApiSettings, create_app
from cache_service.api.samples import FINGERPRINT, cache_status, experiment
from cache_service.api.source import InMemorySource
from cache_service.status import ExperimentStatus

OTHER_FP = "fedcba9876543210"


def _trial(sweep: str, trial: str, epochs: int, lr: float) -> ExperimentStatus:
    exp = experiment(f"{trial}-abc123", epochs=epochs)
    exp.info = {"sweep": sweep, "trial": trial, "trial_id": f"id-{trial}", "values": {"training.lr": lr}}
    if not epochs:
        exp.epoch = -1
    return exp


@pytest.fixture
def client() -> TestClient:
    first = cache_status(experiments=[_trial("sw", "sw-t0", 8, 1e-2), _trial("sw", "sw-t1", 2, 1e-6), experiment()])
    second = cache_status(OTHER_FP, experiments=[_trial("sw", "sw-t2", 0, 3e-3), _trial("other", "o-t0", 4, 1e-3)])
    return TestClient(create_app(InMemorySource([first, second]), ApiSettings()), base_url="http://127.0.0.1")


def test_sweeps_group_trials_with_their_cache_and_best_dice(client: TestClient) -> None:
    sweeps = client.get("/sweeps").json()
    assert [s["sweep"] for s in sweeps] == ["other", "sw"]  # the untagged experiment is in no sweep
    sw = sweeps[1]
    assert [t["trial"] for t in sw["trials"]] == ["sw-t0", "sw-t1", "sw-t2"]
    assert sw["caches"] == sorted([FINGERPRINT, OTHER_FP])
    t0, t1, t2 = sw["trials"]
    assert t0["fingerprint"] == FINGERPRINT and t2["fingerprint"] == OTHER_FP
    assert t0["best_dice"] > t1["best_dice"] and t2["best_dice"] is None
    assert (t0["state"], t2["state"]) == ("training", "starting")
    assert t1["values"] == {"training.lr": 1e-6} and t1["trial_id"] == "id-sw-t1"
    assert sw["best_trial"] == "sw-t0" and sw["best_dice"] == t0["best_dice"]


def test_sweep_gauges_per_trial(client: TestClient) -> None:
    text = client.get("/metrics").text
    assert 'smartcache_sweep_trials{sweep="sw"} 3.0' in text
    assert f'smartcache_sweep_trial_epoch{{fingerprint="{OTHER_FP}",sweep="sw",trial="sw-t2"}} -1.0' in text
    best = [line for line in text.splitlines() if line.startswith("smartcache_sweep_trial_best_dice{")]
    assert len(best) == 3  # sw-t0, sw-t1, o-t0: sw-t2 has not validated yet


def test_dashboard_has_a_sweep_section(client: TestClient) -> None:
    page = client.get("/").text
    assert 'id="sweeps"' in page and 'getJSON("sweeps")' in page and "function sweepCard" in page
