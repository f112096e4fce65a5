"""The no-cache (baseline) data path: records -> preprocess -> crops -> batches, through a DataLoader."""

import numpy as np
import pytest

from common.catalog import load_catalog
from common.config import AugmentConfig, DataConfig, PreprocessConfig, SamplerConfig
from common.demo_data import make_demo_data
from common.preprocess import build_preprocessor
from trainer.loader import PreprocessCropDataset, PreprocessingBatchStream

SAMPLER = SamplerConfig(patch_size=(16, 16, 16), samples_per_volume=3)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_demo_data(tmp_path_factory.mktemp("demo"), cases=5, size=32)
    catalog = load_catalog(root, DataConfig(val_fraction=0.2))
    return catalog, build_preprocessor(catalog, PreprocessConfig(spacing=(1.5, 1.5, 1.5)), SAMPLER.patch_size)


def test_item_is_seeded_crops_of_one_freshly_prepared_volume(data):
    catalog, prep = data
    ds = PreprocessCropDataset(catalog.train, prep, 1.0, SAMPLER, AugmentConfig(), seed=0, epoch=3, rank=0)
    images, labels, positive = ds[1]
    assert images.shape == (3, 1, 16, 16, 16) and images.dtype == np.float32
    assert labels.shape == (3, 1, 16, 16, 16) and positive.dtype == bool
    again = ds[1]
    assert np.array_equal(images, again[0]) and np.array_equal(positive, again[2])
    other_epoch = PreprocessCropDataset(catalog.train, prep, 1.0, SAMPLER, AugmentConfig(), seed=0, epoch=4, rank=0)
    assert not np.array_equal(images, other_epoch[1][0])


@pytest.mark.parametrize("workers", [0, 2])
def test_one_pass_regroups_crops_into_batches(data, workers):
    catalog, prep = data
    with PreprocessingBatchStream(catalog.train, prep, 1.0, SAMPLER, AugmentConfig(), batch_size=2,
                                  num_workers=workers) as stream:
        batches = list(stream)
    crops = len(catalog.train) * SAMPLER.samples_per_volume  # 4 volumes x 3 crops = 12
    assert [b["image"].shape[0] for b in batches] == [2] * (crops // 2)
    assert len(batches) == len(stream) and stream.wait_seconds > 0
    assert all(b["label"].shape == (2, 1, 16, 16, 16) for b in batches)


def test_steps_cycle_the_shard_and_ranks_split_it(data):
    catalog, prep = data
    with PreprocessingBatchStream(catalog.train, prep, 1.0, SAMPLER, AugmentConfig(), batch_size=4, num_workers=0,
                                  rank=1, world_size=2, steps=5) as stream:
        batches = list(stream)
    assert len(batches) == 5 and all(b["image"].shape[0] == 4 for b in batches)


def test_ratio_sets_the_positive_share(data):
    catalog, prep = data
    sampler = SamplerConfig(patch_size=(16, 16, 16), samples_per_volume=40)
    only_pos = PreprocessCropDataset(catalog.train, prep, 1e6, sampler, AugmentConfig(), seed=0, epoch=0, rank=0)
    half = PreprocessCropDataset(catalog.train, prep, 1.0, sampler, AugmentConfig(), seed=0, epoch=0, rank=0)
    assert only_pos[0][2].all()
    assert 0.2 < half[0][2].mean() < 0.8
