"""Run the deterministic chain on real scans and print per-volume time and output shapes.

Usage:
  python benchmarks/dev_data.py /tmp/devdata      # once (see its docstring)
  python benchmarks/preprocess_real.py /tmp/devdata/BrainDev /tmp/devdata/LesionMR

Real data differs from the phantoms in spacing, orientation, dtype and intensity range;
this shows the chain copes with it and what each volume costs to prepare, which is the
work the cache saves on every epoch after the first.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import nibabel as nib
import numpy as np

from common.catalog import fingerprint, load_catalog
from common.config import load_config
from common.preprocess import build_preprocessor


def run(dataset_dir: str, overrides: list[str]) -> None:
    cfg = load_config(None, ["data.val_fraction=0", *overrides])
    catalog = load_catalog(dataset_dir, cfg.data)
    fp = fingerprint(catalog, cfg.preprocessing)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as stats_dir:
        prep = build_preprocessor(catalog, cfg.preprocessing, None, stats_dir, fp)
    stats_s = time.perf_counter() - t0
    print(f"\n{catalog.name} ({catalog.modality}, normalisation {prep.norm}, fingerprint {fp}, "
          f"dataset statistics {stats_s:.2f} s)")
    print(f"{'case':<22}{'source shape':<18}{'source mm':<22}{'axes':<7}{'dtype':<9}"
          f"{'output (C,X,Y,Z)':<22}{'fg voxels':>10}{'out MB':>8}{'seconds':>9}")
    for rec in catalog.train:
        src = nib.load(rec.image)
        zooms = "x".join(f"{z:.2f}" for z in src.header.get_zooms()[:3])
        vol = prep(rec)
        print(f"{rec.item_id:<22}{str(src.shape):<18}{zooms:<22}{''.join(nib.aff2axcodes(src.affine)):<7}"
              f"{str(src.get_data_dtype()):<9}{str(vol.image.shape):<22}{sum(vol.class_counts[1:]):>10}"
              f"{vol.nbytes / 1e6:>8.1f}{vol.prep_seconds:>9.2f}")
        assert np.isfinite(vol.image).all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="+", help="MSD dataset folders (with dataset.json)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="section.key=value")
    args = parser.parse_args()
    for d in args.datasets:
        run(d, args.overrides)


if __name__ == "__main__":
    main()
