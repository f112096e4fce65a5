"""Faults are visible: /cache and /experiments/{id} show restarts and the last fault; metrics count them."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from cache_service.api import ApiSettings, create_app
from cache_service.api.samples import FINGERPRINT, cache_status, experiment
from cache_service.api.source import InMemorySource
from cache_service.registry import ExperimentRegistry
from cache_service.status import FaultEvent
from cache_service.cli import format_status

LOOPBACK = "http://127.0.0.1"  # the API answers loopback Host headers only (DNS rebinding)


@pytest.fixture
def faulty():
    """A cache that restarted once, whose experiment also lost a trainer worker and twice its validator."""
    reg = ExperimentRegistry()
    exp = experiment()
    reg._experiments[exp.experiment_id] = exp  # noqa: SLF001 - seeding the sample through the real bookkeeping
    cache_fault = FaultEvent(kind="cache", time=1.0, cause="the cache actor's process died", seconds_lost=2.5)
    reg.record_fault(None, cache_fault)
    reg.record_fault(exp.experiment_id, FaultEvent(kind="validator", time=2.0, epoch=5, cause="validator died"))
    reg.record_fault(exp.experiment_id, FaultEvent(kind="validator", time=3.0, epoch=7, cause="validator died"))
    reg.record_fault(exp.experiment_id, FaultEvent(kind="trainer", time=4.0, epoch=8, cause="rank 1: ActorDiedError",
                                                   seconds_lost=14.0))
    status = cache_status(experiments=reg.statuses()).model_copy(update={"restarts": 1, "last_fault": cache_fault})
    return status


def test_cache_and_experiment_show_restarts_and_last_fault(faulty):
    client = TestClient(create_app(InMemorySource([faulty]), ApiSettings()), base_url=LOOPBACK)
    [cache] = client.get("/cache").json()
    assert cache["restarts"] == 1 and cache["last_fault"]["kind"] == "cache"
    exp = client.get("/experiments/spleen-a1b2c3").json()
    assert exp["restarts"] == {"cache": 1, "validator": 2, "trainer": 1}
    assert exp["last_fault"]["kind"] == "trainer" and exp["last_fault"]["seconds_lost"] == 14.0
    assert [f["kind"] for f in exp["faults"]] == ["cache", "validator", "validator", "trainer"]
    [row] = client.get("/experiments").json()
    assert row["restarts"]["validator"] == 2


def test_prometheus_counts_each_kind_of_restart(faulty):
    source = InMemorySource([faulty, cache_status("fedcba9876543210", experiments=[])])
    text = TestClient(create_app(source), base_url=LOOPBACK).get("/metrics").text
    samples = {(s.name, s.labels.get("fingerprint"), s.labels.get("experiment")): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("smartcache_cache_restarts_total", FINGERPRINT, None)] == 1
    assert samples[("smartcache_cache_restarts_total", "fedcba9876543210", None)] == 0
    assert samples[("smartcache_trainer_restarts_total", FINGERPRINT, "spleen-a1b2c3")] == 1
    assert samples[("smartcache_validator_restarts_total", FINGERPRINT, "spleen-a1b2c3")] == 2


def test_status_command_prints_restarts_and_faults(faulty):
    text = format_status([faulty.model_dump()])
    assert "restarts: cache 1" in text and "last fault: cache, 2.5 s lost: the cache actor's process died" in text
    assert "RESTARTS c/t/v" in text and " 1/1/2" in text
    assert "spleen-a1b2c3 last fault: trainer at epoch 8, 14.0 s lost: rank 1: ActorDiedError" in text
