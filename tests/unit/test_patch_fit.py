"""A too-small volume is found from the shapes the cache reports, before any batch, naming the user's own setting."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, RandCropByPosNegLabeld, RandFlipd

from cache_service.pool import CacheBook, PrepMeta
from cache_service.sdk.api import SmartCache
from common.catalog import Record
from common.chain import split_user_chain
from common.config import config_from_dict, load_config
from common.errors import DataError
from common.patch_fit import require_patch_fits, too_small

KEYS = ["image", "label"]
SHAPES = {"c0": (40, 40, 20), "c1": (12, 40, 40), "c2": (40, 40, 40), "c3": (40, 30, 9)}


def test_too_small_keeps_every_case_short_along_any_axis_in_order() -> None:
    assert list(too_small(SHAPES, (16, 16, 16))) == ["c1", "c3"]
    assert too_small(SHAPES, (12, 30, 9)) == {}  # equal to the patch fits
    assert too_small({"a": [8, 8, 8]}, (16, 8, 8)) == {"a": (8, 8, 8)}


def test_the_error_names_every_small_case_its_shape_the_setting_and_a_bound_that_fits() -> None:
    files = {c: f"/data/{c}.nii.gz" for c in SHAPES}
    with pytest.raises(DataError) as info:
        require_patch_fits(SHAPES, (16, 16, 16), "patch_size=", files=files)
    err = info.value
    assert err.path == "/data/c1.nii.gz, /data/c3.nii.gz"
    assert "2 volume(s)" in err.problem and "c1 (12, 40, 40), c3 (40, 30, 9)" in err.problem
    assert "lower patch_size= to at most (12, 16, 9)" in err.problem
    assert "not checked" not in err.problem
    require_patch_fits(SHAPES, (12, 16, 9), "patch_size=")  # the bound it suggests does fit


def test_cases_not_prepared_yet_are_said_to_be_unchecked() -> None:
    with pytest.raises(DataError, match=r"3 case\(s\) not prepared yet were not checked.*sampler\.patch_size"):
        require_patch_fits({"c3": (40, 30, 9)}, (16, 16, 16), "sampler.patch_size", unchecked=3)


def test_the_book_keeps_the_shape_of_every_training_item_it_prepared_after_it_leaves_the_pool() -> None:
    ids = [f"c{i}" for i in range(6)]
    book = CacheBook(ids, [], 2, 0.5, 10**9, replace_workers=1, rng=np.random.default_rng(0))
    for _ in range(4):
        for item in book.next_train_jobs():
            book.started(item)
            book.accept(PrepMeta(item, 10, 1.0, spatial_shape=(8, 8, int(item[1:]) + 1)), f"ref-{item}")
    prepared = dict(book.status_fields()["train_shapes"])
    assert set(book.plan.pool) <= set(prepared) and prepared[book.plan.pool[0]][:2] == [8, 8]
    leaving = book.rotate().leaving
    assert leaving and all(i in book.status_fields()["train_shapes"] for i in leaving)
    assert book.status_fields()["train_shapes"] == prepared  # leaving the pool forgets no shape


class _Status(SimpleNamespace):
    """What ``_require_patch_fits`` reads of a CacheStatus."""


def _cache(shapes: dict[str, tuple[int, ...]], transforms: Compose | None = None,
           raw: dict[str, Any] | None = None) -> SmartCache:
    status = _Status(train_shapes=shapes, train_items=len(shapes) + 1, quarantined=[])
    catalog = SimpleNamespace(num_classes=2, train=tuple(Record(c, f"/data/{c}.nii.gz", f"/lab/{c}") for c in shapes))
    cfg = config_from_dict(raw) if raw is not None else load_config(None, [])
    chain = split_user_chain(transforms) if transforms is not None else None
    return SmartCache(cfg, catalog, "ab12", handle=SimpleNamespace(status=lambda: status), chain=chain)


def _chain(size: int) -> Compose:
    return Compose([LoadImaged(keys=KEYS), EnsureChannelFirstd(keys=KEYS), RandFlipd(keys=KEYS, prob=0.5),
                    RandCropByPosNegLabeld(keys=KEYS, label_key="label", spatial_size=(size,) * 3, num_samples=2)])


def test_experiment_with_a_patch_size_refuses_before_any_batch_naming_patch_size() -> None:
    cache = _cache(SHAPES)
    with pytest.raises(DataError) as info:
        cache.experiment("big", patch_size=(16, 16, 16))
    assert "/data/c1.nii.gz" in str(info.value) and "lower patch_size= to at most" in str(info.value)
    assert "1 case(s) not prepared yet" in str(info.value)
    assert cache.experiment("fits", patch_size=(9, 9, 9)).settings.sampler.patch_size == (9, 9, 9)


def test_connect_knows_the_patch_from_the_chain_or_a_config_it_was_given_not_from_a_default() -> None:
    crop = _cache(SHAPES, _chain(16))._patch_known_at_connect()
    assert crop == ((16, 16, 16), "transforms[3].spatial_size (RandCropByPosNegLabeld)")
    assert _cache(SHAPES, raw={"sampler": {"patch_size": [32, 32, 32]}})._patch_known_at_connect() == (
        (32, 32, 32), "sampler.patch_size")
    assert _cache(SHAPES)._patch_known_at_connect() is None  # the default 112^3 is not the user's choice


def test_a_chain_crop_too_large_is_refused_naming_the_chains_spatial_size() -> None:
    cache = _cache(SHAPES, _chain(16))
    with pytest.raises(DataError, match=r"c1 \(12, 40, 40\), c3 \(40, 30, 9\).*lower transforms\[3\]\.spatial_size"):
        cache._require_patch_fits(*cache._patch_known_at_connect(), cache.status())
    with pytest.raises(DataError, match=r"lower transforms\[3\]\.spatial_size"):
        cache.experiment("chain-crop")  # the experiment's patch comes from the same chain


def test_experiment_refuses_a_patch_the_user_set_but_not_the_builtin_default() -> None:
    # the default 112^3 is checked per batch (an experiment reading only snapshots never cuts one)
    assert _cache(SHAPES).experiment("snapshots-only").settings.sampler.patch_size == (112, 112, 112)
    with pytest.raises(DataError, match="lower sampler.patch_size to at most"):
        _cache(SHAPES, raw={"sampler": {"patch_size": [32, 32, 32]}}).experiment("from-config")
    with pytest.raises(DataError, match=r"transforms\[3\].spatial_size"):
        _cache(SHAPES, _chain(16)).experiment("from-chain")
