"""The public client on a real cache: a user's MONAI Compose, and fair rotation for a fast and a slow experiment."""

from __future__ import annotations

import threading
import time
import uuid
from itertools import count

import numpy as np
import pytest
import ray
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandScaleIntensityd,
    ScaleIntensityRanged,
    Spacingd,
)
from numpy.lib.stride_tricks import sliding_window_view

from cache_service import SmartCache
from cache_service.client import stop_caches
from common.demo_data import make_demo_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KEYS = ["image", "label"]
PATCH = (10, 10, 10)


def _prefix(a_max: float = 300.0) -> list:
    return [LoadImaged(keys=KEYS), EnsureChannelFirstd(keys=KEYS), Orientationd(keys=KEYS, axcodes="RAS"),
            Spacingd(keys=KEYS, pixdim=(2.0, 2.0, 2.0), mode=("bilinear", "nearest")),
            ScaleIntensityRanged(keys="image", a_min=-200.0, a_max=a_max, b_min=0.0, b_max=1.0, clip=True)]


def _user_compose() -> Compose:
    return Compose(_prefix() + [
        RandCropByPosNegLabeld(keys=KEYS, label_key="label", spatial_size=PATCH, pos=1, neg=1, num_samples=2),
        RandFlipd(keys=KEYS, prob=1.0, spatial_axis=0),  # always: a crop must match a mirrored volume patch
        RandScaleIntensityd(keys="image", factors=(1.0, 1.0), prob=1.0),  # always x2: [0, 1] becomes [0, 2]
    ])


def _found_in(patch: np.ndarray, volumes: list[np.ndarray]) -> bool:
    """Whether ``patch`` (X, Y, Z) equals some window of one of the volumes."""
    for vol in volumes:
        windows = sliding_window_view(vol, patch.shape)
        if np.isclose(windows, patch, atol=1e-5).all(axis=(3, 4, 5)).any():
            return True
    return False


@pytest.mark.timeout(240)
def test_user_compose_prefix_is_cached_and_suffix_runs_on_crops(ray_cluster, tmp_path):
    data = make_demo_data(tmp_path / "d", cases=5, size=32, seed=3)
    namespace = f"sdk-{uuid.uuid4().hex[:6]}"
    kwargs = dict(cache_num=2, replace_rate=0.5, val_fraction=0.25, address=None, namespace=namespace,
                  settings={"cache": {"task_num_cpus": 0.25}})
    try:
        cache = SmartCache.connect(data, transforms=_user_compose(), **kwargs)
        with cache.experiment("user-chain", batch_size=2, steps=3) as exp:  # 2 volumes x num_samples=2 a step
            assert exp.settings.sampler.patch_size == PATCH and exp.settings.sampler.samples_per_volume == 2
            snap = exp.snapshot(0)
            prefix, volumes = Compose(_prefix()), []
            for item_id, ref in zip(snap.item_ids, snap.refs):  # exactly the prefix is what the cache holds
                vol, rec = ray.get(ref), cache.catalog.record(item_id)
                want = prefix({"image": rec.image, "label": rec.label})
                np.testing.assert_allclose(vol.image, want["image"].numpy(), atol=1e-6)
                np.testing.assert_array_equal(vol.label, np.rint(want["label"].numpy()).astype(np.uint8))
                assert 0.0 <= vol.image.min() and vol.image.max() <= 1.0  # no random step ran in the cache
                volumes.append(vol.image[0])
            with exp.batches(0) as batches:
                crops = list(batches)
        assert [b["image"].shape[0] for b in crops] == [4, 4, 4]  # batch_size counted as MONAI counts it
        images = np.concatenate([b["image"].numpy() for b in crops])[:, 0]
        assert images.shape[1:] == PATCH and len(images) == 12
        assert images.max() > 1.0 and images.max() <= 2.0 + 1e-6  # RandScaleIntensityd ran on the crops
        inside = [im / 2 for im in images if _found_in(im[::-1] / 2, volumes) or _found_in(im / 2, volumes)]
        assert inside, "no crop lies wholly inside a volume (all padded?)"
        assert all(_found_in(im[::-1], volumes) for im in inside)  # every crop is mirrored (RandFlipd ran)
        other = SmartCache.connect(data, transforms=Compose(_prefix(a_max=250.0)), wait=False, **kwargs)
        assert other.fingerprint != cache.fingerprint  # another prefix argument: another cache
    finally:
        stop_caches(namespace)


def _train(exp, epoch_s: float, stop: threading.Event, out: dict) -> None:
    """An experiment at its own speed: snapshot, 'train' for epoch_s, report; records what it saw."""
    for epoch in count():
        t0 = time.monotonic()
        snap = exp.snapshot(epoch)
        out["latency"].append(time.monotonic() - t0)
        out["generations"].append(snap.generation)
        time.sleep(epoch_s)
        out["seen"].update(snap.item_ids)
        exp.finish_epoch(epoch)
        out["epochs"] = epoch + 1
        if stop.is_set():
            return


@pytest.mark.timeout(240)
def test_fast_and_slow_experiment_both_see_every_item_and_neither_waits(ray_cluster, stats_dir, tmp_path):
    data = make_demo_data(tmp_path / "d", cases=10, size=24, seed=4)
    namespace = f"fair-{uuid.uuid4().hex[:6]}"
    cache = SmartCache.connect(data, cache_num=3, replace_rate=0.5, val_fraction=0.2, address=None,
                               namespace=namespace, settings={"cache": {"task_num_cpus": 0.25,
                                                                        "stats_dir": str(stats_dir)}})
    train_ids = {r.item_id for r in cache.catalog.train}
    runs = {"fast": {"latency": [], "generations": [], "seen": set(), "epochs": 0},
            "slow": {"latency": [], "generations": [], "seen": set(), "epochs": 0}}
    stop = threading.Event()
    try:
        with cache.experiment("fast") as fast, cache.experiment("slow") as slow:
            threads = [threading.Thread(target=_train, args=(fast, 0.1, stop, runs["fast"])),
                       threading.Thread(target=_train, args=(slow, 0.3, stop, runs["slow"]))]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not all(runs[k]["seen"] >= train_ids for k in runs):
                time.sleep(0.2)
            stop.set()
            for t in threads:
                t.join(30)
            status = cache.status()
        for name, run in runs.items():
            assert run["seen"] == train_ids, f"{name} missed {train_ids - run['seen']}"
        assert status.rotations >= 3  # a full cycle: (8 - 3) / R=2 rotations
        # neither waits: snapshots answer at once, and the fast one ran about 3x as many epochs
        assert max(runs["fast"]["latency"] + runs["slow"]["latency"]) < 2.0
        assert runs["fast"]["epochs"] >= 2 * runs["slow"]["epochs"], runs
        # the fast one repeated generations; the slow one never skipped one
        slow_gens = runs["slow"]["generations"]
        assert all(b - a <= 1 for a, b in zip(slow_gens, slow_gens[1:])), slow_gens
        by_id = {e.experiment_id: e for e in status.experiments}
        assert by_id[fast.id].repeated_epochs > 0 and by_id[fast.id].cycles_completed >= 1
        assert by_id[slow.id].cycles_completed >= 1
    finally:
        stop.set()
        stop_caches(namespace)
