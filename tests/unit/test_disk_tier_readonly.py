"""A disk tier the process cannot write, touch or delete in degrades to "no disk tier": nothing is quarantined.

Tests run as root here, where chmod does not stop writes, so the refusals are simulated by
making ``os.utime`` / ``os.replace`` / ``Path.unlink`` / ``os.access`` refuse; the real
read-only folder runs where the tests run as another user.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from cache_service.disk_tier import DiskTier
from cache_service.pool import CacheBook, PrepMeta
from cache_service import disk_tier
from cache_service.tasks import prepare_item
from common.catalog import load_catalog
from common.config import CacheConfig, DataConfig, PreprocessConfig
from common.demo_data import make_demo_data
from common.preprocess import build_preprocessor
from common.volume import PreparedVolume
from tests.unit.test_disk_tier import _assert_same, _volume


def _same_data(a: PreparedVolume, b: PreparedVolume) -> None:
    """Equal arrays and fields; the time each took to prepare differs by nature."""
    _assert_same(a, dataclasses.replace(b, prep_seconds=a.prep_seconds))


def _refuse(*_args: object, **_kwargs: object) -> None:
    raise PermissionError(13, "Read-only file system")


@pytest.fixture
def dataset(tmp_path: Path):
    root = make_demo_data(tmp_path / "data", cases=4, size=16)
    catalog = load_catalog(root, DataConfig(val_fraction=0.0))
    return catalog, build_preprocessor(catalog, PreprocessConfig(normalization="mri"), None)


def test_read_survives_a_refused_touch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tier = DiskTier(tmp_path, "fp")
    tier.write(_volume())
    monkeypatch.setattr(os, "utime", _refuse)
    vol, note = tier.read("case/01")
    assert vol is not None and note is None
    _assert_same(vol, _volume())
    assert tier.error is not None and tier.error.startswith("cannot touch") and "Read-only" in tier.error


def test_refused_delete_of_a_corrupt_file_does_not_escape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tier = DiskTier(tmp_path, "fp")
    path = tier.write(_volume())
    path.write_bytes(path.read_bytes()[:200])
    monkeypatch.setattr(Path, "unlink", _refuse)
    vol, note = tier.read("case/01")
    assert vol is None and note is not None and "rejected corrupt" in note
    assert path.exists() and tier.error is not None and tier.error.startswith("cannot delete")


def test_unreadable_file_is_a_miss_not_a_rejection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tier = DiskTier(tmp_path, "fp")
    path = tier.write(_volume())
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != path)
    assert tier.read("case/01") == (None, None)
    assert path.exists() and tier.error is not None and tier.error.startswith("cannot read")


def test_read_only_tier_serves_every_item_equal_to_a_fresh_preprocess(dataset, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    catalog, prep = dataset
    cache = CacheConfig(disk_dir=str(tmp_path / "tier"))
    written = prepare_item(prep, catalog.train[0], cache, "fp")  # a tier filled while it was writable
    assert not written[0].from_disk and written[0].disk_error is None
    monkeypatch.setattr(os, "replace", _refuse)
    monkeypatch.setattr(os, "utime", _refuse)
    for rec in catalog.train:
        meta, vol = prepare_item(prep, rec, cache, "fp")
        _same_data(vol, prep(rec))
        assert meta.from_disk == (rec is catalog.train[0]) and meta.disk_note is None
        assert meta.disk_error is not None and "Read-only" in meta.disk_error
    assert sorted(p.name for p in (tmp_path / "tier" / "fp").iterdir()) == [f"{catalog.train[0].item_id}.arrow"]


def test_refused_eviction_keeps_the_written_file(dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog, prep = dataset
    monkeypatch.setattr(disk_tier, "evict", _refuse)  # the task imports the tier when it runs
    meta, vol = prepare_item(prep, catalog.train[0], CacheConfig(disk_dir=str(tmp_path / "tier")), "fp")
    assert meta.disk_error is not None and meta.disk_error.startswith(f"cannot evict old files under {tmp_path}")
    _same_data(DiskTier(tmp_path / "tier", "fp").read(catalog.train[0].item_id)[0], vol)


@pytest.mark.skipif(os.getuid() == 0, reason="root writes into a read-only folder anyway; simulated above")
def test_real_read_only_folder(dataset, tmp_path: Path) -> None:
    catalog, prep = dataset
    cache = CacheConfig(disk_dir=str(tmp_path / "tier"))
    prepare_item(prep, catalog.train[0], cache, "fp")
    folder = tmp_path / "tier" / "fp"
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        for rec in catalog.train:
            meta, vol = prepare_item(prep, rec, cache, "fp")
            _same_data(vol, prep(rec))
            if not meta.from_disk:
                assert meta.disk_error is not None
    finally:
        folder.chmod(stat.S_IRWXU)


def _book(ids: list[str]) -> CacheBook:
    return CacheBook(ids, [], 2, 0.5, 10**9, replace_workers=2, rng=np.random.default_rng(0))


def test_book_flags_the_tier_once_and_keeps_serving(caplog: pytest.LogCaptureFixture) -> None:
    book = _book(["a", "b", "c"])
    book.disk_tier = "ok"
    with caplog.at_level(logging.WARNING, logger="cache_service.pool"):
        for item in book.next_train_jobs():
            book.started(item)
            book.accept(PrepMeta(item, 10, 1.0, disk_error=f"cannot write /tier/{item}.arrow (PermissionError)"),
                        f"ref-{item}")
    st = book.status_fields()
    assert st["state"] == "ready" and st["items_cached"] == 2 and not st["quarantined"]
    assert st["disk_tier"] == "read-only" and st["disk_tier_error"].startswith("cannot write /tier/")
    assert sum("disk tier degraded to read-only" in r.message for r in caplog.records) == 1


def test_book_without_tier_errors_reports_ok() -> None:
    book = _book(["a", "b"])
    book.disk_tier = "ok"
    for item in book.next_train_jobs():
        book.started(item)
        book.accept(PrepMeta(item, 10, 1.0), f"ref-{item}")
    assert book.status_fields()["disk_tier"] == "ok" and book.status_fields()["disk_tier_error"] == ""
