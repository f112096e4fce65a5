"""A user's MONAI Compose: split, cacheability errors, fingerprint identity; the consumer-side suffix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    Lambdad,
    LoadImaged,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandScaleIntensityd,
    ScaleIntensityRanged,
    Spacingd,
)

from cache_service.sdk.batches import ConsumerSettings, CropBatches, apply_suffix
from cache_service.sdk.protocol import validation_numbers
from cache_service.snapshot import Snapshot
from common.catalog import fingerprint, load_catalog
from common.chain import chain_identity, describe, split_user_chain
from common.config import PreprocessConfig, SamplerConfig
from common.errors import ConfigError, DataError
from common.volume import PreparedVolume, class_voxel_indices

KEYS = ["image", "label"]


def user_chain(a_max: float = 1.0, flip_prob: float = 0.5) -> Compose:
    return Compose([
        LoadImaged(keys=KEYS), EnsureChannelFirstd(keys=KEYS), Orientationd(keys=KEYS, axcodes="RAS"),
        Spacingd(keys=KEYS, pixdim=(1.5, 1.5, 1.5), mode=("bilinear", "nearest")),
        ScaleIntensityRanged(keys="image", a_min=0.0, a_max=a_max, b_min=0.0, b_max=1.0, clip=True),
        RandCropByPosNegLabeld(keys=KEYS, label_key="label", spatial_size=(16, 16, 8), pos=3, neg=1, num_samples=2),
        RandFlipd(keys=KEYS, prob=flip_prob, spatial_axis=0),
        RandScaleIntensityd(keys="image", factors=0.1, prob=1.0),
    ])


def _double(x):  # module level, so it pickles
    return x * 2


def test_split_lifts_the_crop_and_keeps_the_rest() -> None:
    chain = split_user_chain(user_chain())
    assert [type(t).__name__ for t in chain.prefix.transforms] == [
        "LoadImaged", "EnsureChannelFirstd", "Orientationd", "Spacingd", "ScaleIntensityRanged"]
    assert [type(t).__name__ for t in chain.suffix.transforms] == ["RandFlipd", "RandScaleIntensityd"]
    assert chain.crop is not None and chain.crop.patch_size == (16, 16, 8)
    assert chain.crop.samples_per_volume == 2 and chain.crop.initial_ratio == pytest.approx(3.0)


def test_identity_covers_arguments_and_is_stable() -> None:
    a, b = split_user_chain(user_chain()), split_user_chain(user_chain())
    assert a.identity == b.identity  # same transforms and arguments, separate objects
    assert split_user_chain(user_chain(a_max=2.0)).identity != a.identity  # one argument differs
    assert split_user_chain(user_chain(flip_prob=0.9)).identity == a.identity  # the suffix is not cached
    assert "0x" not in str(describe(a.prefix.transforms))  # no memory addresses in the identity


def test_fingerprint_differs_by_prefix(tmp_path, make_case, make_dataset) -> None:
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    item = make_case(tmp_path, "a", np.ones((8, 8, 4), np.float32), np.zeros((8, 8, 4), np.uint8), affine)
    catalog = load_catalog(make_dataset(tmp_path, [item]))
    cfg = PreprocessConfig()
    fps = {fingerprint(catalog, cfg), fingerprint(catalog, cfg, chain_identity(user_chain().transforms[:5])),
           fingerprint(catalog, cfg, chain_identity(user_chain(a_max=2.0).transforms[:5]))}
    assert len(fps) == 3


def test_unpicklable_prefix_is_named() -> None:
    chain = Compose([LoadImaged(keys=KEYS), Lambdad(keys="image", func=lambda x: x + 1), RandFlipd(keys=KEYS)])
    with pytest.raises(ConfigError, match=r"transforms\[1\].*Lambdad.*must pickle"):
        split_user_chain(chain)
    split_user_chain(Compose([LoadImaged(keys=KEYS), Lambdad(keys="image", func=_double)]))  # picklable: fine


class _Wrapper:  # a deterministic-looking step that hides a random transform
    def __init__(self) -> None:
        self.inner = RandFlipd(keys=KEYS, prob=1.0)

    def __call__(self, d):
        return self.inner(d)


def test_random_transform_inside_prefix_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"transforms\[1\].*_Wrapper.*random transform RandFlipd"):
        split_user_chain([LoadImaged(keys=KEYS), _Wrapper(), RandFlipd(keys=KEYS)])


def test_nested_compose_is_flattened_not_taken_for_random() -> None:
    chain = split_user_chain(Compose([Compose([LoadImaged(keys=KEYS), EnsureChannelFirstd(keys=KEYS)]),
                                      RandFlipd(keys=KEYS)]))
    assert len(chain.prefix.transforms) == 2 and len(chain.suffix.transforms) == 1


def test_apply_suffix_runs_on_every_crop() -> None:
    image = torch.arange(2 * 1 * 4 * 3 * 2, dtype=torch.float32).reshape(2, 1, 4, 3, 2)
    label = (image > 20).to(torch.uint8)
    suffix = Compose([RandFlipd(keys=KEYS, prob=1.0, spatial_axis=0),
                      RandScaleIntensityd(keys="image", factors=(1.0, 1.0), prob=1.0)])
    out = apply_suffix({"image": image, "label": label, "positive": torch.ones(2, dtype=torch.bool)}, suffix)
    assert torch.equal(out["image"], 2 * image.flip(2))  # flipped along the first spatial axis, scaled by 2
    assert torch.equal(out["label"], label.flip(2)) and out["label"].dtype == torch.uint8
    assert type(out["image"]) is torch.Tensor and out["positive"].all()


def _volume(item_id: str, shape=(12, 12, 12)) -> PreparedVolume:
    label = np.zeros((1, *shape), np.uint8)
    label[0, 4:8, 4:8, 4:8] = 1
    image = np.random.default_rng(0).random((1, *shape)).astype(np.float32)
    idx, counts = class_voxel_indices(label, 2, image.nbytes)
    return PreparedVolume(item_id, image, label, idx, counts, np.eye(4), np.eye(4), shape,
                          source={"image": f"/data/{item_id}.nii.gz"})


def test_crop_batches_check_this_consumers_patch() -> None:
    vols = {"a": _volume("a"), "b": _volume("b", (12, 12, 6))}
    snap = Snapshot(0, ("a", "b"), ("a", "b"), 1.0)
    small = ConsumerSettings(sampler=SamplerConfig(patch_size=(6, 6, 6), samples_per_volume=2), batch_size=2)
    with CropBatches(snap, small, epoch=0, rank=0, world_size=1, fetch=vols.__getitem__) as batches:
        assert sum(b["image"].shape[0] for b in batches) == 4
    big = small.with_overrides(patch_size=(8, 8, 8))
    assert big.sampler.patch_size == (8, 8, 8) and big.batch_size == 2
    with pytest.raises(DataError, match=r"/data/b.nii.gz.*smaller than this experiment's patch \(8, 8, 8\)"):
        with CropBatches(snap, big, epoch=0, rank=0, world_size=1, fetch=vols.__getitem__) as batches:
            list(batches)


def test_validation_numbers_follow_eq_4_to_6() -> None:
    label = np.zeros((8, 8, 8), np.int64)
    label[2:6, 2:6, 2:6] = 1
    pred = np.zeros_like(label)
    pred[2:6, 2:6, 2:4] = 1  # half the organ found, no false positives
    n = validation_numbers([pred], [label[None]], 2, SamplerConfig(), current_ratio=1.0, epoch=0)
    tp, fn = 32, 32
    assert n.dice_per_class == pytest.approx((2 * tp / (2 * tp + fn),))
    union = fn + tp  # no false positives (Eq. 5-6: denominators FP + FN + TP)
    assert n.r_fp == pytest.approx(tp / union) and n.r_fn == pytest.approx((fn + tp) / union)
    assert n.ratio == pytest.approx(n.r_fn / n.r_fp)  # more positives: the model misses foreground
    fixed = validation_numbers([pred], [label], 2, SamplerConfig(adaptive=False), current_ratio=0.7, epoch=0)
    assert fixed.ratio == 0.7


class _LocalExperiment:
    """Stands in for an Experiment: the same CropBatches, volumes from a dict instead of the cache."""

    def __init__(self, volumes: dict[str, PreparedVolume], settings: ConsumerSettings) -> None:
        self.volumes, self.settings, self.calls = volumes, settings, []

    def batches(self, epoch: int, *, rank: int, world_size: int, **overrides) -> CropBatches:
        self.calls.append((epoch, rank, world_size))
        snap = Snapshot(epoch, tuple(self.volumes), tuple(self.volumes), 1.0)
        return CropBatches(snap, self.settings.with_overrides(**overrides), epoch=epoch, rank=rank,
                           world_size=world_size, fetch=self.volumes.__getitem__)


@pytest.mark.filterwarnings("ignore:.*pin_memory.*")
def test_crop_dataset_in_a_pinned_dataloader() -> None:
    from monai.data import list_data_collate
    from torch.utils.data import DataLoader

    from cache_service.sdk import CropDataset

    exp = _LocalExperiment({k: _volume(k) for k in "abcd"},
                           ConsumerSettings(sampler=SamplerConfig(patch_size=(6, 6, 6), samples_per_volume=1),
                                            batch_size=2))
    ds = CropDataset(exp, rank=1, world_size=2)
    loader = DataLoader(ds, batch_size=2, collate_fn=list_data_collate, pin_memory=True)
    for epoch in range(2):
        ds.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == 1 and batches[0]["image"].shape == (2, 1, 6, 6, 6)  # rank 1's half: 2 volumes
    assert exp.calls == [(0, 1, 2), (1, 1, 2)]


def test_an_empty_suffix_is_not_run_per_crop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A chain that ends with its crop: batches as without a suffix (service augmentation off), no per-crop pass."""
    import cache_service.sdk.batches as batches_module

    def refuse(*_: object) -> None:
        raise AssertionError("apply_suffix ran for an empty suffix")

    vols = {k: _volume(k) for k in "abc"}
    snap = Snapshot(0, tuple(vols), tuple(vols), 1.0)
    sampler = SamplerConfig(patch_size=(6, 6, 6), samples_per_volume=2)
    empty = ConsumerSettings(sampler=sampler, batch_size=2, suffix=Compose([]))
    plain = ConsumerSettings(sampler=sampler, augment=batches_module.NO_AUGMENT, batch_size=2)
    with CropBatches(snap, plain, epoch=0, rank=0, world_size=1, fetch=vols.__getitem__) as batches:
        want = [{k: v.clone() for k, v in b.items()} for b in batches]
    monkeypatch.setattr(batches_module, "apply_suffix", refuse)
    with CropBatches(snap, empty, epoch=0, rank=0, world_size=1, fetch=vols.__getitem__) as batches:
        got = [{k: v.clone() for k, v in b.items()} for b in batches]
    assert len(got) == len(want) == 3
    assert all(g.keys() == w.keys() and all(torch.equal(g[k], w[k]) for k in g) for g, w in zip(got, want))
