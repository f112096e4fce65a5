"""A cache whose every training volume fails is "failed", not "ready", and warm-up raises with the cause."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

import pytest

import cache_service.client as client
from cache_service.pool import CacheBook, PrepMeta
from cache_service.status import CacheStatus
from common.errors import PoolFailedError

CAUSE = "/data/a.nii.gz: preprocessing failed: AssertionError: Torch not compiled with CUDA enabled"


def _book(ids: list[str], val: tuple[str, ...] = ()) -> CacheBook:
    return CacheBook(ids, list(val), 2, 0.5, 10**9, replace_workers=2, rng=np.random.default_rng(0))


def _play(book: CacheBook, fail: set[str]) -> None:
    for _ in range(4):
        for item in book.next_train_jobs():
            book.started(item)
            if item in fail:
                book.fail(item, CAUSE.replace("a.nii", f"{item}.nii"))
            else:
                book.accept(PrepMeta(item, 10, 1.0), f"ref-{item}")


def test_every_item_quarantined_is_failed_with_the_first_cause() -> None:
    book = _book(["a", "b", "c"])
    _play(book, {"a", "b", "c"})
    st = book.status_fields()
    assert st["state"] == "failed" and st["items_cached"] == 0 and len(st["quarantined"]) == 3
    assert "Torch not compiled with CUDA enabled" in st["failure"]


def test_some_items_quarantined_is_still_ready() -> None:
    book = _book(["a", "b", "c", "d"])
    _play(book, {"a", "c"})
    st = book.status_fields()
    assert st["state"] == "ready" and st["failure"] == "" and sorted(st["pool"]) == ["b", "d"]


def _status(**fields: Any) -> CacheStatus:
    base = dict(fingerprint="fp", name="smartcache-fp", state="filling", train_items=3, cache_num=2, capacity=2,
                items_cached=0, pool=[], bytes_cached=0, byte_budget=10**9, generation=0, rotations=0,
                replace_num=1, replacements_pending=0, replacements_ready=0, val_items_total=0, val_items_cached=0)
    return CacheStatus(**{**base, **fields})


def test_wait_until_ready_raises_at_once_when_the_pool_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([_status(), _status(state="failed", failure=f"a: {CAUSE}")])
    handle = SimpleNamespace(status=lambda: next(answers))  # the typed handle's one method used here
    with pytest.raises(PoolFailedError, match="all 3 training volume.*Torch not compiled with CUDA enabled"):
        client.wait_until_ready(handle, timeout_s=30, progress=False, poll_s=0.0)
