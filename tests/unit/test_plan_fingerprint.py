"""Per-case statistics from real files, in RAS order, and the stored fingerprint's round trip (no Ray)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.catalog import load_catalog
from common.demo_data import make_demo_data
from common.planning.fingerprint import (
    PERCENTILES,
    DatasetFingerprint,
    case_statistics,
    fingerprint_path,
    load_fingerprint,
    save_fingerprint,
)
from common.planning.machine import described_machine
from common.planning.plan import make_plan


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("fp"), cases=3, size=32, seed=2)


def test_case_statistics_follow_the_file_in_ras_order(demo: Path) -> None:
    catalog = load_catalog(demo)
    rec = catalog.train[0]
    stats = case_statistics(rec, catalog.num_classes, timed=True)
    img, lab = nib.load(rec.image), np.asarray(nib.load(rec.label).dataobj)
    canonical = nib.as_closest_canonical(img)
    assert stats.shape == canonical.shape[:3]
    assert np.allclose(stats.spacing, canonical.header.get_zooms()[:3], atol=1e-4)
    assert stats.orientation == "".join(nib.aff2axcodes(img.affine))
    fractions = np.bincount(lab.reshape(-1).astype(int), minlength=catalog.num_classes) / lab.size
    assert np.allclose(stats.class_fractions, fractions)
    hu = np.asarray(img.dataobj, dtype=np.float32)[lab > 0]
    assert stats.fg_percentiles[PERCENTILES.index(50.0)] == pytest.approx(float(np.median(hu)), rel=1e-3)
    assert all(0 < e <= n * s + 1e-6 for e, n, s in zip(stats.fg_extent_mm, stats.shape, stats.spacing))
    assert stats.prep_seconds is not None and stats.prep_seconds > 0
    assert case_statistics(rec, catalog.num_classes).prep_seconds is None


def test_stored_fingerprint_reads_back_equal_and_plans(demo: Path, tmp_path: Path) -> None:
    catalog = load_catalog(demo)
    cases = tuple(case_statistics(r, catalog.num_classes, i == 0) for i, r in enumerate(catalog.train + catalog.val))
    fp = DatasetFingerprint(catalog.name, catalog.modality, catalog.labels, len(catalog.train), cases)
    assert load_fingerprint(tmp_path, "k") is None
    save_fingerprint(fp, tmp_path, "k")
    assert fingerprint_path(tmp_path, "k").is_file()
    assert load_fingerprint(tmp_path, "k") == fp
    plan = make_plan(fp, described_machine("1x2"))
    plan.config(str(demo))  # a valid experiment config
    assert plan.value("preprocessing.normalization") == "ct"
