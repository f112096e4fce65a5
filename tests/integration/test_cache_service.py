"""The cache actor on a real local Ray: sharing, rotation under a reader, disk tier, quarantine, idle exit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import ray

from cache_service.client import attach, wait_until_ready
from common.errors import CacheUnavailableError, UnknownItemError

pytestmark = pytest.mark.integration

SECOND_DRIVER = textwrap.dedent("""
    import json, sys, ray
    from cache_service.client import attach
    address, fp, ns = sys.argv[1:4]
    ray.init(address=address, log_to_driver=False)
    handle = attach(fp, ns)
    handle.register("second-driver")
    snap = handle.snapshot("second-driver")
    first = ray.get(snap.refs[0])
    print(json.dumps({"actor_id": handle.ping()["actor_id"], "generation": snap.generation,
                      "refs": [r.hex() for r in snap.refs], "item0": first.item_id,
                      "shared": not first.image.flags.writeable}))
    handle.unregister("second-driver")
""")


@pytest.mark.timeout(120)
def test_two_drivers_share_one_cache_and_other_spacing_gets_another(make_cache, demo_root, config_for,
                                                                     ray_cluster) -> None:
    handle, _, cfg, fp = make_cache(demo_root, config_for())
    wait_until_ready(handle, timeout_s=90, progress=False)
    handle.register("first-driver")
    mine = handle.snapshot("first-driver")
    out = subprocess.run([sys.executable, "-c", SECOND_DRIVER, ray_cluster, fp, cfg.cache.namespace],
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-3000:]
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    assert theirs["actor_id"] == handle.ping()["actor_id"]
    assert theirs["generation"] == mine.generation
    assert theirs["refs"] == [r.hex() for r in mine.refs]  # the same object-store copies
    assert theirs["item0"] == mine.item_ids[0] and theirs["shared"]
    status = handle.status()
    assert all(status.use_counts[i] == 2 for i in mine.item_ids) and status.seconds_saved > 0

    other, _, _, other_fp = make_cache(demo_root, config_for(preprocessing={"spacing": [1.5, 1.5, 1.5]},
                                                              namespace=cfg.cache.namespace))
    assert other_fp != fp
    assert other.ping()["actor_id"] != handle.ping()["actor_id"]


@pytest.mark.timeout(120)
def test_rotation_never_blocks_a_reader_nor_breaks_its_snapshot(make_cache, demo_root, config_for) -> None:
    handle, _, _, _ = make_cache(demo_root, config_for())
    handle.register("exp")
    wait_until_ready(handle, timeout_s=90, progress=False)
    deadline = time.monotonic() + 30
    while handle.status().replacements_ready < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    snap = handle.snapshot("exp", epoch=0)
    stop, reads, worst = threading.Event(), [0], [0.0]

    def reader() -> None:
        while not stop.is_set():
            for ref in snap.refs:
                t = time.perf_counter()
                vol = ray.get(ref, timeout=10)
                worst[0] = max(worst[0], time.perf_counter() - t)
                assert vol.image.size > 0
                reads[0] += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        pools = []
        for epoch in range(3):  # the only experiment finishes each epoch: the pool rotates, as in production
            t = time.perf_counter()
            handle.report_progress("exp", epoch)
            assert time.perf_counter() - t < 2.0  # rotation swaps ready items only, never prepares
            pools.append(handle.snapshot("exp", epoch=epoch + 1))
            time.sleep(0.3)
    finally:
        stop.set()
        thread.join(timeout=20)
    assert reads[0] > 0 and worst[0] < 2.0
    first = pools[0]
    leaving, entering = set(snap.item_ids) - set(first.item_ids), set(first.item_ids) - set(snap.item_ids)
    assert first.generation == snap.generation + 1 and len(leaving) == len(entering) == 2
    after = pools[-1]
    assert after.generation > snap.generation and len(after) == 3 and len(set(after.item_ids)) == 3
    gone = [r for i, r in zip(snap.item_ids, snap.refs) if i not in after.item_ids]
    assert gone and all(ray.get(r, timeout=10).item_id in snap.item_ids for r in gone)  # left the pool, still readable
    assert handle.status().experiments[0].epoch == 2


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.timeout(150)
def test_disk_tier_survives_restart_and_rejects_a_corrupt_file(make_cache, demo_root, config_for,
                                                                tmp_path: Path) -> None:
    from cache_service.client import stop_cache

    cfg = config_for(disk_dir=str(tmp_path / "tier"), replace_rate=0.01)  # R = 1
    handle, _, _, fp = make_cache(demo_root, cfg)
    first = wait_until_ready(handle, timeout_s=90, progress=False)
    deadline = time.monotonic() + 30
    while handle.status().replacements_pending and time.monotonic() < deadline:
        time.sleep(0.2)
    first = handle.status()
    assert first.prep_seconds_spent > 0 and first.disk_hits == 0
    files = sorted((tmp_path / "tier" / fp).glob("*.arrow"))
    assert len(files) == first.items_cached + first.replacements_ready + first.val_items_cached
    stop_cache(handle)

    handle, _, _, _ = make_cache(demo_root, cfg)
    second = wait_until_ready(handle, timeout_s=60, progress=False)
    assert second.prep_seconds_spent == 0 and second.disk_hits >= second.items_cached + second.val_items_cached
    assert second.seconds_saved > 0 and sorted(second.pool) == sorted(first.pool)
    stop_cache(handle)

    victim = tmp_path / "tier" / fp / f"{first.pool[0]}.arrow"
    _flip_middle_byte(victim)
    handle, _, _, _ = make_cache(demo_root, cfg)
    third = wait_until_ready(handle, timeout_s=60, progress=False)
    assert any(first.pool[0] in note and "corrupt" in note for note in third.disk_rejected)
    assert first.pool[0] in third.pool and third.prep_seconds_spent > 0  # re-made, not served from the bad file
    from cache_service.disk_tier import DiskTier
    assert DiskTier(tmp_path / "tier", fp).read(first.pool[0])[0] is not None


@pytest.mark.timeout(120)
def test_corrupt_case_is_quarantined_and_the_rest_served(make_cache, demo_root, config_for, tmp_path: Path) -> None:
    root = Path(shutil.copytree(demo_root, tmp_path / "data"))
    from common.catalog import load_catalog
    bad = load_catalog(root).train[0]
    raw = Path(bad.image).read_bytes()
    Path(bad.image).write_bytes(raw[: len(raw) // 3])  # truncated gzip
    handle, catalog, _, _ = make_cache(root, config_for(cache_num=4))
    handle.register("exp")
    status = wait_until_ready(handle, timeout_s=90, progress=False)
    assert [q.item_id for q in status.quarantined] == [bad.item_id]
    assert bad.image in status.quarantined[0].error
    assert status.items_cached == 4 and bad.item_id not in status.pool
    snap = handle.snapshot("exp")
    assert len(snap) == 4 and all(ray.get(r).item_id == i for i, r in zip(snap.item_ids, snap.refs))
    for epoch in range(4):  # rotate as production does: the only experiment finishes an epoch
        handle.snapshot("exp", epoch=epoch)
        handle.report_progress("exp", epoch)
        assert bad.item_id not in handle.status().pool


@pytest.mark.timeout(60)
def test_registry_ratio_and_idle_exit(make_cache, demo_root, config_for) -> None:
    handle, _, cfg, fp = make_cache(demo_root, config_for(idle_timeout_s=1.5))
    handle.register("exp", {"initial_ratio": 2.0})
    assert handle.get_ratio("exp") == 2.0
    with pytest.raises(UnknownItemError):
        handle.get_ratio("nobody")
    handle.publish_sampler("exp", 3.0, 0.2, 0.6, [0.9, 0.5], 0.7, 1)
    assert handle.get_ratio("exp") == 3.0
    assert handle.snapshot("exp").ratio == 3.0
    exp = handle.status().experiments[0]
    assert exp.sampler_history[0].r_fn == 0.6 and exp.sampler_history[0].dice_per_class == [0.9, 0.5]
    time.sleep(2.0)
    attach(fp, cfg.cache.namespace)  # an attached experiment keeps it alive
    assert handle.unregister("exp")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            attach(fp, cfg.cache.namespace, timeout_s=5)
        except CacheUnavailableError:
            return
        time.sleep(0.5)
    pytest.fail("the cache did not free itself after idle_timeout_s with no experiment attached")
