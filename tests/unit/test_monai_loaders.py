"""exp.dataset() under the loaders MONAI users write, MONAI's batch count, and failures that reach the loop."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from monai.data import DataLoader as MonaiDataLoader
from monai.data import ThreadDataLoader, list_data_collate
from torch.utils.data import DataLoader

from cache_service.sdk.api import Experiment
from cache_service.sdk.batches import ConsumerSettings, CropBatches, CropDataset
from cache_service.snapshot import Snapshot
from common.config import SamplerConfig
from common.errors import DataError
from common.volume import PreparedVolume, class_voxel_indices

PATCH = (6, 6, 6)


def _volume(item_id: str, shape: tuple[int, int, int] = (12, 12, 12)) -> PreparedVolume:
    label = np.zeros((1, *shape), np.uint8)
    label[0, 2:5, 2:5, 2:5] = 1
    image = np.random.default_rng(0).random((1, *shape)).astype(np.float32)
    idx, counts = class_voxel_indices(label, 2, image.nbytes)
    return PreparedVolume(item_id, image, label, idx, counts, np.eye(4), np.eye(4), shape,
                          source={"image": f"/data/{item_id}.nii.gz"})


class _LocalExperiment(Experiment):
    """A real Experiment whose batches come from a dict of volumes instead of the cache."""

    def __init__(self, volumes: dict[str, PreparedVolume], settings: ConsumerSettings) -> None:
        super().__init__("fp", "ns", "local", settings, num_classes=2)
        self.volumes = volumes

    def batches(self, epoch: int, *, rank: int = 0, world_size: int = 1, **overrides: Any) -> CropBatches:
        snap = Snapshot(epoch, tuple(self.volumes), tuple(self.volumes), 1.0)
        return CropBatches(snap, self.settings.with_overrides(**overrides), epoch=epoch, rank=rank,
                           world_size=world_size, fetch=self.volumes.__getitem__)


def _monai_settings(batch_size: int = 2, num_samples: int = 4) -> ConsumerSettings:
    """What experiment() makes from a chain with RandCropByPosNegLabeld(num_samples=...)."""
    return ConsumerSettings(sampler=SamplerConfig(patch_size=PATCH, samples_per_volume=num_samples),
                            batch_size=batch_size, batch_counts_volumes=True,
                            patch_parameter="transforms[5].spatial_size (RandCropByPosNegLabeld)")


def _experiment(n: int = 4, **kw: Any) -> _LocalExperiment:
    return _LocalExperiment({f"v{i}": _volume(f"v{i}") for i in range(n)}, _monai_settings(**kw))


def test_batch_size_counts_volumes_as_monai_does() -> None:
    exp = _experiment(batch_size=2, num_samples=4)
    assert exp.settings.crops_per_batch == 8
    with exp.batches(0) as batches:
        sizes = [b["image"].shape[0] for b in batches]
    assert sizes == [8, 8]  # 4 volumes x 4 crops, two volumes' worth a step
    crops = ConsumerSettings(sampler=SamplerConfig(patch_size=PATCH, samples_per_volume=4), batch_size=2)
    assert crops.crops_per_batch == 2  # the project's own config counts crops


@pytest.mark.parametrize("loader, batch_size, crops", [
    (MonaiDataLoader, None, 4), (MonaiDataLoader, 2, 8), (ThreadDataLoader, None, 4), (ThreadDataLoader, 2, 8),
    (ThreadDataLoader, 1, 4)])
def test_monai_loaders_as_users_write_them(loader: type, batch_size: int | None, crops: int) -> None:
    exp = _experiment(batch_size=2, num_samples=4)
    ds = exp.dataset(rank=0, world_size=1)
    for epoch in range(2):
        ds.set_epoch(epoch)
        batches = list(loader(ds, batch_size=batch_size))
        assert batches, "an epoch must not be empty"
        assert all(b["image"].shape == (crops, 1, *PATCH) and b["label"].shape == (crops, 1, *PATCH)
                   for b in batches)
        assert sum(b["image"].shape[0] for b in batches) == 16  # every crop of the 4 volumes, once
        assert all(b["positive"].shape == (crops,) for b in batches)


def test_torch_dataloader_with_monai_collate_counts_the_same() -> None:
    ds = _experiment(batch_size=2, num_samples=4).dataset(rank=0, world_size=1)
    batches = list(DataLoader(ds, batch_size=2, collate_fn=list_data_collate))
    assert [b["image"].shape[0] for b in batches] == [8, 8]


def test_dataset_items_are_monai_lists_of_num_samples_crops() -> None:
    ds = _experiment(n=2, num_samples=3).dataset(rank=0, world_size=1)
    items = list(ds)
    assert len(items) == 2 and all(isinstance(i, list) and len(i) == 3 for i in items)
    assert items[0][0]["image"].shape == (1, *PATCH)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_producer_failure_in_a_thread_loader_reaches_the_training_thread() -> None:
    exp = _LocalExperiment({"ok": _volume("ok"), "tiny": _volume("tiny", (12, 12, 4))}, _monai_settings())
    ds = exp.dataset(rank=0, world_size=1)
    assert list(ThreadDataLoader(ds, batch_size=2)) == []  # MONAI's thread drops the error and ends the epoch
    with pytest.raises(DataError, match=r"tiny.*transforms\[5\]\.spatial_size"):
        exp.finish_epoch(0, rank=1)  # ... so it is raised at the next call in the training thread
    assert exp.finish_epoch(0, rank=1) is False  # raised once; rank 1 sends nothing


def test_a_producer_failure_under_torch_loaders_is_raised_where_the_loop_iterates() -> None:
    exp = _LocalExperiment({"ok": _volume("ok"), "tiny": _volume("tiny", (12, 12, 4))}, _monai_settings())
    with pytest.raises(DataError, match="tiny"):
        list(MonaiDataLoader(exp.dataset(rank=0, world_size=1), batch_size=2))


def test_every_too_small_volume_is_named_with_the_parameter_set() -> None:
    vols = {"a": _volume("a", (12, 5, 12)), "b": _volume("b"), "c": _volume("c", (4, 12, 12))}
    exp = _LocalExperiment(vols, _monai_settings())
    with pytest.raises(DataError) as info:
        exp.batches(0)
    message = str(info.value)
    assert "/data/a.nii.gz" in message and "/data/c.nii.gz" in message and "/data/b.nii.gz" not in message
    assert "2 volume(s)" in message and "lower transforms[5].spatial_size" in message
    assert "a (12, 5, 12)" in message and "c (4, 12, 12)" in message
    assert "at most (4, 5, 6)" in message
    override = exp.settings.with_overrides(patch_size=(6, 6, 6))
    assert override.patch_parameter == "patch_size="


def test_the_users_fgbg_background_indices_are_used_for_negatives(tmp_path, make_case, make_dataset) -> None:
    from monai.transforms import Compose, EnsureChannelFirstd, FgBgToIndicesd, LoadImaged

    from common.catalog import load_catalog
    from common.config import PreprocessConfig
    from common.preprocess import Preprocessor

    image = np.zeros((12, 12, 12), np.float32)
    image[1:11, 1:11, 1:11] = 0.3  # a dim shell, above the air but below the user's threshold
    image[2:10, 2:10, 2:10] = 1.0  # the body; outside it is air
    label = np.zeros((12, 12, 12), np.uint8)
    label[4:6, 4:6, 4:6] = 1
    root = tmp_path / "ds"
    root.mkdir()
    make_dataset(root, [make_case(root, f"c{i}", image, label, np.eye(4)) for i in range(5)])
    record = load_catalog(root).train[0]
    keys = ["image", "label"]
    plain = [LoadImaged(keys=keys), EnsureChannelFirstd(keys=keys)]
    masked = Compose([*plain, FgBgToIndicesd(keys="label", image_key="image", image_threshold=0.5)])
    inside = Preprocessor(PreprocessConfig(), 2, "none", None, chain=masked)(record)
    own = Preprocessor(PreprocessConfig(), 2, "none", None, chain=Compose(plain))(record)
    values = inside.image[0].reshape(-1)
    assert (values[inside.background_indices()] > 0.5).all()  # the user's threshold, as MONAI draws them
    own_values = values[own.background_indices()]
    assert (own_values > 0).all() and not (own_values > 0.5).all()  # the cache's own rule: above the air
    assert (inside.label.reshape(-1)[inside.background_indices()] == 0).all()
    assert inside.class_counts == own.class_counts  # the label's own counts are unchanged
