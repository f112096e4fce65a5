"""The REST API over an in-memory source: every endpoint, 404/422/503, token rules, and a bounded fuzz."""

from __future__ import annotations

import random
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from cache_service.api import ApiSettings, create_app
from cache_service.api.errors import ApiError
from cache_service.api.samples import FINGERPRINT, cache_status, experiment
from cache_service.api.source import InMemorySource
from common.errors import CacheUnavailableError

LOOPBACK = "http://127.0.0.1"  # the API answers loopback Host headers only (DNS rebinding)

OTHER_FP = "fedcba9876543210"
TOKEN = "s3cret-token"


@pytest.fixture
def source() -> InMemorySource:
    return InMemorySource([cache_status(), cache_status(OTHER_FP, experiments=[experiment("other-exp", epochs=0)])])


@pytest.fixture
def client(source: InMemorySource) -> TestClient:
    return TestClient(create_app(source, ApiSettings()), base_url=LOOPBACK)


def test_healthz_and_dashboard(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "auth_required": False}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script>" in page.text and "http" not in page.text.replace("http://www.w3.org/2000/svg", "")


def test_cache_lists_every_fingerprint_and_filters(client: TestClient) -> None:
    both = client.get("/cache").json()
    assert [c["fingerprint"] for c in both] == sorted([FINGERPRINT, OTHER_FP])
    one = client.get("/cache", params={"fingerprint": FINGERPRINT}).json()
    assert len(one) == 1 and one[0]["pool"] == cache_status().pool and one[0]["rotations"] == 2
    assert client.get("/cache", params={"fingerprint": "00000000000000aa"}).status_code == 404
    # fair rotation: each experiment's coverage of the current cycle, and whom the next rotation waits for
    exp = one[0]["experiments"][0]
    assert exp["cycle_seen"][:2] == ["case_02", "case_03"] and exp["cycle_coverage"] == pytest.approx(8 / 11)
    assert exp["done_generation"] == 3 and exp["cycles_completed"] == 2 and exp["repeated_epochs"] == 14
    other = client.get("/cache", params={"fingerprint": OTHER_FP}).json()[0]
    assert other["rotation_waits_for"] == ["other-exp"] and other["experiments"][0]["cycle_coverage"] == 0.0
    assert client.get("/cache", params={"fingerprint": "../etc"}).status_code == 422


def test_cache_items_states(client: TestClient) -> None:
    [items] = client.get("/cache/items", params={"fingerprint": FINGERPRINT}).json()
    states = {i["item_id"]: i["state"] for i in items["items"]}
    pool = cache_status().pool
    assert [states[i] for i in pool] == ["leaving", "leaving"] + ["in_pool"] * (len(pool) - 2)
    assert states["case_00"] == "waiting" and states["case_11"] == "quarantined"
    assert [states[f"val_{k:02d}"] for k in range(3)] == ["validation"] * 3  # never drawn as waiting pool items
    assert items["waiting_unlisted"] == 12 - 6 - 1 - 2
    bad = client.get("/cache/items", params={"state": "quarantined"}).json()
    assert all(i["state"] == "quarantined" and i["error"] for c in bad for i in c["items"])
    assert client.get("/cache/items", params={"state": "bogus"}).status_code == 422


def test_experiments_and_sampler(client: TestClient) -> None:
    rows = client.get("/experiments").json()
    assert {r["experiment_id"] for r in rows} == {"spleen-a1b2c3", "other-exp"}
    row = next(r for r in rows if r["experiment_id"] == "spleen-a1b2c3")
    assert row["fingerprint"] == FINGERPRINT and row["reports"] == 8 and row["last_mean_dice"] > 0.8
    assert row["cycle_coverage"] == pytest.approx(8 / 11) and row["done_generation"] == 3
    detail = client.get("/experiments/spleen-a1b2c3").json()
    assert detail["fingerprint"] == FINGERPRINT and len(detail["sampler_history"]) == 8
    sampler = client.get("/experiments/spleen-a1b2c3/sampler").json()
    assert sampler["ratio"] == pytest.approx(2.75) and sampler["pos_fraction"] == pytest.approx(2.75 / 3.75)
    assert sampler["r_fn"] > sampler["r_fp"] and len(sampler["history"]) == 8
    fresh = client.get("/experiments/other-exp/sampler").json()
    assert fresh["ratio"] == 1.0 and fresh["last_mean_dice"] is None and fresh["history"] == []
    for path in ("/experiments/nope", "/experiments/nope/sampler"):
        assert client.get(path).status_code == 404
    assert client.get("/experiments/" + "x" * 300).status_code == 422


def test_metrics_prometheus_text(client: TestClient) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {(s.name, s.labels.get("fingerprint"), s.labels.get("experiment")): s.value
               for fam in text_string_to_metric_families(r.text) for s in fam.samples}
    assert samples[("smartcache_caches", None, None)] == 2
    assert samples[("smartcache_items_cached", FINGERPRINT, None)] == 6
    assert samples[("smartcache_rotations_total", FINGERPRINT, None)] == 2
    assert samples[("smartcache_quarantined_items", FINGERPRINT, None)] == 1
    assert samples[("smartcache_byte_budget_bytes", FINGERPRINT, None)] == 64 << 20
    assert samples[("smartcache_sampler_ratio", FINGERPRINT, "spleen-a1b2c3")] == pytest.approx(2.75)
    assert ("smartcache_last_mean_dice", OTHER_FP, "other-exp") not in samples  # no validation yet


def test_dead_actor_is_503_not_500() -> None:
    class Dead(InMemorySource):
        def caches(self):  # type: ignore[override]
            raise CacheUnavailableError("smartcache-0123", "the actor died or was stopped")

    class Broken(InMemorySource):
        def experiments(self):  # type: ignore[override]
            raise RuntimeError("RayActorError: boom")

    for src, path in ((Dead(), "/cache"), (Dead(), "/metrics"), (Broken(), "/experiments")):
        r = TestClient(create_app(src), raise_server_exceptions=False, base_url=LOOPBACK).get(path)
        assert r.status_code == 503 and "unavailable" in r.json()["detail"]


def test_bind_rules() -> None:
    ApiSettings().check()  # loopback, no token: fine
    ApiSettings(host="::1").check()
    ApiSettings(host="0.0.0.0", token=TOKEN).check()
    for host in ("0.0.0.0", "10.1.2.3", "example.org"):
        with pytest.raises(ApiError, match="without a token"):
            ApiSettings(host=host).check()
    with pytest.raises(ApiError, match="empty"):
        ApiSettings(host="0.0.0.0", token="  ").check()


def test_token_required_everywhere_but_healthz_and_the_page(source: InMemorySource) -> None:
    c = TestClient(create_app(source, ApiSettings(host="0.0.0.0", token=TOKEN).check()), base_url=LOOPBACK)
    assert c.get("/healthz").json()["auth_required"] is True
    page = c.get("/")  # a browser cannot send a bearer header for a typed URL; the page holds no data
    assert page.status_code == 200 and TOKEN not in page.text and "spleen-a1b2c3" not in page.text
    assert "Authorization" in page.text and "sessionStorage" in page.text
    paths = ["/cache", "/cache/items", "/experiments", "/experiments/spleen-a1b2c3",
             "/experiments/spleen-a1b2c3/sampler", "/metrics", "/openapi.json"]
    for path in paths:
        assert c.get(path).status_code == 401, path
        assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get(path, headers={"Authorization": TOKEN}).status_code == 401  # no scheme
        assert c.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200, path
    assert c.get("/cache").headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:8740", "localhost:8740", "[::1]:8740"])
def test_a_loopback_api_answers_loopback_host_headers(source: InMemorySource, host: str) -> None:
    c = TestClient(create_app(source, ApiSettings()), base_url=LOOPBACK)
    assert c.get("/cache", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8740", "127.0.0.1.evil.example", "", "a b"])
def test_a_loopback_api_refuses_other_host_headers_against_dns_rebinding(source: InMemorySource, host: str) -> None:
    c = TestClient(create_app(source, ApiSettings()), base_url=LOOPBACK)
    for path in ("/", "/cache", "/healthz"):
        r = c.get(path, headers={"Host": host})
        assert r.status_code == 400 and r.text == "Invalid host header", (path, host)


def test_the_configured_host_and_a_non_loopback_bind(source: InMemorySource) -> None:
    assert "127.0.0.2" in ApiSettings(host="127.0.0.2").trusted_hosts()
    assert "[::1]" in ApiSettings(host="::1").trusted_hosts()
    assert ApiSettings(host="0.0.0.0", token=TOKEN).trusted_hosts() is None  # any name; the token guards it
    c = TestClient(create_app(source, ApiSettings(host="0.0.0.0", token=TOKEN)), base_url="http://node-7:8740")
    assert c.get("/cache", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def _nasty(rng: random.Random) -> str:
    pieces = ["../", "..%2f", "%00", "é", "💥", "\u202e", "' OR 1=1 --", "<script>", "%", "?", "#", "\\",
              "a" * rng.choice([1, 300, 5000]), "spleen-a1b2c3", FINGERPRINT, " ", "%ff", "{}", "\t"]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(1, 4)))


def test_fuzz_no_5xx(source: InMemorySource) -> None:
    """200 malformed ids, query values and headers: every answer is 2xx/4xx, never a server error."""
    rng = random.Random(1234)
    clients = [TestClient(create_app(source, s), raise_server_exceptions=False, base_url=LOOPBACK)
               for s in (ApiSettings(), ApiSettings(host="0.0.0.0", token=TOKEN))]
    for case in range(200):
        raw = _nasty(rng)
        junk = quote(raw, safe=rng.choice(["", "/.%", "/?&=#"]))  # encoded, half-encoded or nearly raw
        c = clients[case % 2]
        path = rng.choice(["/experiments/{}", "/experiments/{}/sampler", "/cache?fingerprint={}",
                           "/cache/items?state={}", "/cache/items?fingerprint={}&state=in_pool", "/{}", "/cache/{}",
                           "/metrics?{}={}"]).replace("{}", junk)
        auth = rng.choice([f"Bearer {TOKEN}", "Bearer", "", "Basic Zm9vOmJhcg==", "Bearer " + "x" * 4000,
                           f"bearer  {TOKEN}", "Bearer \xe9\xff"])
        r = c.get(path, headers={"Authorization": auth.encode("latin-1"), "X-Junk": raw.encode("utf-8")[:8000].replace(b"\t", b" ")})
        assert r.status_code < 500, (path, auth, r.status_code, r.text[:300])


def test_cache_status_shows_a_read_only_disk_tier_and_a_failed_pool() -> None:
    bad = cache_status().model_copy(update={"state": "failed", "failure": "case_11: RuntimeError: no CUDA",
                                            "disk_tier": "read-only",
                                            "disk_tier_error": "cannot write /tier/x.arrow (PermissionError)"})
    [got] = TestClient(create_app(InMemorySource([bad]), ApiSettings()), base_url=LOOPBACK).get("/cache").json()
    assert got["state"] == "failed" and got["failure"].endswith("RuntimeError: no CUDA")
    assert got["disk_tier"] == "read-only" and got["disk_tier_error"].startswith("cannot write /tier/")
    assert cache_status().disk_tier == "off"
