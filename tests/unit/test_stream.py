"""The trainer's data path on fake in-memory volumes: sharding, determinism, errors, shutdown."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from cache_service.sdk.stream import BatchPlan, BatchProducerError, CropBatchStream, HostCutter, shard
from common.config import AugmentConfig, SamplerConfig
from common.volume import PreparedVolume, class_voxel_indices

SAMPLER = SamplerConfig(patch_size=(8, 8, 8), samples_per_volume=3, ratio_bounds=(0.1, 10.0))
AUG = AugmentConfig(flip_prob=0.5, shift_prob=0.5)


def make_volume(i: int, shape: tuple[int, int, int] = (20, 18, 16)) -> PreparedVolume:
    rng = np.random.default_rng(i)
    image = (rng.random((1, *shape)) + i).astype(np.float32)  # intensity tells which volume a crop came from
    label = np.zeros((1, *shape), dtype=np.uint8)
    label[0, 5:12, 4:10, 3:9] = 1
    image.setflags(write=False)
    label.setflags(write=False)
    indices, counts = class_voxel_indices(label, 2, image.nbytes)
    return PreparedVolume(f"v{i}", image, label, indices, counts, np.eye(4), np.eye(4), shape)


VOLUMES = [make_volume(i) for i in range(7)]


def identity(v: PreparedVolume) -> PreparedVolume:
    return v


def stream(**kw) -> CropBatchStream:
    args = dict(refs=VOLUMES, fetch=identity, ratio=1.0, sampler=SAMPLER, augment=AUG, batch_size=4, seed=3)
    args.update(kw)
    return CropBatchStream(**args)


@pytest.mark.parametrize("n, world", [(10, 3), (7, 2), (4, 4), (3, 5), (1, 1)])
def test_shard_covers_all_items_with_equal_counts(n: int, world: int) -> None:
    parts = [shard(n, r, world, epoch=2, seed=9) for r in range(world)]
    assert len({len(p) for p in parts}) == 1
    assert len(parts[0]) == -(-n // world)
    assert set().union(*map(set, parts)) == set(range(n))
    assert all(0 <= i < n for p in parts for i in p)


def test_shard_is_deterministic_and_reshuffles_per_epoch() -> None:
    assert shard(50, 1, 4, 3, 7) == shard(50, 1, 4, 3, 7)
    assert shard(50, 1, 4, 3, 7) != shard(50, 1, 4, 4, 7)
    assert shard(50, 1, 4, 3, 7) != shard(50, 1, 4, 3, 8)
    assert shard(0, 0, 2, 0, 0) == []


def test_shard_rejects_bad_rank() -> None:
    with pytest.raises(ValueError, match="rank"):
        shard(5, 2, 2, 0, 0)


def test_batches_shapes_counts_and_positive_flags() -> None:
    with stream() as s:
        batches = list(s)
    # 7 volumes x 3 crops = 21 crops -> 5 full batches + 1 of 1
    assert [b["image"].shape[0] for b in batches] == [4, 4, 4, 4, 4, 1]
    assert len(s) == 6
    assert s.crops_delivered == 21 and s.batches_delivered == 6
    b = batches[0]
    assert b["image"].dtype == torch.float32 and b["image"].shape[1:] == (1, 8, 8, 8)
    assert b["label"].shape[1:] == (1, 8, 8, 8) and b["positive"].dtype == torch.bool


def test_centre_label_matches_positive_without_augmentation() -> None:
    off = AugmentConfig(flip_prob=0.0, shift_prob=0.0)
    with stream(augment=off, ratio=1.0) as s:
        for b in s:
            assert torch.equal(b["label"][:, 0, 4, 4, 4] > 0, b["positive"])


def test_batches_mix_volumes() -> None:
    off = AugmentConfig(flip_prob=0.0, shift_prob=0.0)
    with stream(augment=off, batch_size=6) as s:
        sources = [set(np.floor(b["image"][:, 0].amax(dim=(1, 2, 3)).numpy()).astype(int)) for b in s]
    assert any(len(src) > 1 for src in sources)


def test_same_seed_same_batches_in_same_order() -> None:
    with stream() as a, stream() as b, stream(seed=4) as c:
        la, lb, lc = list(a), list(b), list(c)
    assert all(torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"]) for x, y in zip(la, lb))
    assert not all(torch.equal(x["image"], y["image"]) for x, y in zip(la, lc))


def test_steps_cycles_the_shard() -> None:
    with stream(steps=11, rank=1, world_size=2) as s:
        batches = list(s)
    assert len(batches) == 11 and all(b["image"].shape[0] == 4 for b in batches)


def test_ranks_get_equal_step_counts() -> None:
    counts = []
    for rank in range(3):
        with stream(rank=rank, world_size=3) as s:
            counts.append(len(list(s)))
    assert len(set(counts)) == 1


def test_producer_error_is_reraised_with_cause() -> None:
    def broken(v: PreparedVolume) -> PreparedVolume:
        if v.item_id == "v5":
            raise KeyError("object lost")
        return v

    with stream(fetch=broken, batch_size=1) as s:
        with pytest.raises(BatchProducerError, match="object lost") as info:
            list(s)
    assert isinstance(info.value.__cause__, KeyError)


def test_wait_seconds_measures_consumer_wait() -> None:
    def slow(v: PreparedVolume) -> PreparedVolume:
        time.sleep(0.02)
        return v

    with stream(fetch=slow, refs=VOLUMES[:3]) as s:
        list(s)
    assert s.wait_seconds >= 0.04


def test_close_mid_epoch_does_not_hang() -> None:
    s = stream(steps=1000, prefetch=1)
    next(iter(s))
    time.sleep(0.05)  # let the producer block on the full queue
    start = time.perf_counter()
    s.close()
    assert time.perf_counter() - start < 1.0
    assert not s._thread.is_alive()
    with pytest.raises(StopIteration):
        next(s)
    s.close()  # twice is fine


def test_close_before_iterating() -> None:
    before = threading.active_count()
    s = stream(steps=50)
    s.close()
    assert not s._thread.is_alive() and threading.active_count() <= before


def test_empty_snapshot_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        stream(refs=[])


def assert_same_batches(xs: list, ys: list) -> None:
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("threads", [2, 3, 5])
def test_copy_threads_give_the_same_batches_as_one_thread(threads: int) -> None:
    """Planning is sequential and delivery in plan order, so the thread count never changes the output."""
    aug = AugmentConfig(flip_prob=0.5, shift_prob=0.5, scale_prob=0.5, contrast_prob=0.5)
    for kw in ({}, {"steps": 13, "rank": 1, "world_size": 2}, {"batch_size": 1, "prefetch": 1}):
        with stream(augment=aug, copy_threads=1, **kw) as one, stream(augment=aug, copy_threads=threads, **kw) as many:
            assert_same_batches(list(one), list(many))


def test_copy_threads_deliver_in_order_when_copies_finish_out_of_order() -> None:
    """A slow first volume must not let later batches overtake it."""
    slow_ids = {"v0", "v1"}
    host = HostCutter(SAMPLER.patch_size, AUG)

    def slow_cutter(plan: BatchPlan) -> dict:
        if any(c.volume.item_id in slow_ids for c in plan.crops):
            time.sleep(0.02)
        return host(plan)

    with stream(copy_threads=3, batch_size=1, cutter=slow_cutter) as many:
        got = list(many)
    with stream(copy_threads=1, batch_size=1) as one:
        assert_same_batches(got, list(one))


def test_copy_thread_error_is_reraised_with_cause() -> None:
    bad = make_volume(9)
    bad.label = bad.label[:, :4]  # shapes no longer match: the copy fails in a copy thread
    with stream(refs=[*VOLUMES[:2], bad], copy_threads=2, batch_size=1) as s:
        with pytest.raises(BatchProducerError) as info:
            list(s)
    assert info.value.__cause__ is not None


def test_keep_fetched_fetches_each_volume_once_per_stream() -> None:
    calls: list[str] = []

    def counting(v: PreparedVolume) -> PreparedVolume:
        calls.append(v.item_id)
        return v

    with stream(fetch=counting, steps=40, keep_fetched=True) as kept:
        kept_batches = list(kept)
    assert sorted(calls) == sorted(v.item_id for v in VOLUMES)
    calls.clear()
    with stream(fetch=counting, steps=40) as plain:
        assert_same_batches(kept_batches, list(plain))
    assert len(calls) > len(VOLUMES)  # by default every volume draw fetches (the no-cache baseline reloads)


def test_close_stops_copy_threads() -> None:
    before = threading.active_count()
    s = stream(steps=1000, copy_threads=3, prefetch=1)
    next(iter(s))
    s.close()
    assert threading.active_count() <= before


def test_bad_copy_threads() -> None:
    with pytest.raises(ValueError, match="copy_threads"):
        stream(copy_threads=0)
