"""The public-SDK rows of the datapath benchmark: ``SmartCache.connect`` + ``exp.batches`` in a plain process.

A user's training script is a plain Python process that joins the Ray cluster, connects to (or
starts) the cache and iterates ``exp.batches``; the benchmark's main service rows instead run a
``CropBatchStream`` inside Ray actors. ``benchmarks/datapath.py`` runs this file as such a
process, joined to its own cluster, once per chain, and reads the JSON line it prints last:

* ``--chain project``: ``transforms=None``, the project's own deterministic chain;
* ``--chain user``: the MONAI chain a user would write (:func:`user_chain`), handed to
  ``connect`` whole: the cache runs its deterministic prefix, and the service's crop replaces
  its ``RandCropByPosNegLabeld`` (nothing follows it, so the consumer's suffix is empty).

The cache is built by ``connect`` (its build time is reported apart) and stopped at the end.
Timing starts at the first batch, after the machine went under 30 % CPU, as in every row.

  python benchmarks/datapath_sdk.py --address GCS --dataset DIR --chain user --seconds 6
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from datapath import drain, wait_idle  # noqa: E402 -- the script's folder is on sys.path
from monai.transforms import (  # noqa: E402
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    RandCropByPosNegLabeld,
    Spacingd,
)

from cache_service.sdk import SmartCache  # noqa: E402

KEYS = ["image", "label"]


def user_chain(patch: int, spacing: tuple[float, float, float]) -> Compose:
    """A MONAI user's chain: load, channel first, RAS, resample, z-score, then MONAI's pos/neg crop at 1:1.

    The last transform is the only random one; the MONAI fast-recipe row with this chain puts
    ``FgBgToIndicesd`` + ``EnsureTyped(track_meta=False)`` before it (what its tutorial does).
    """
    return Compose([
        LoadImaged(keys=KEYS),
        EnsureChannelFirstd(keys=KEYS),
        Orientationd(keys=KEYS, axcodes="RAS"),
        Spacingd(keys=KEYS, pixdim=spacing, mode=("bilinear", "nearest")),
        NormalizeIntensityd(keys="image", nonzero=True),
        RandCropByPosNegLabeld(keys=KEYS, label_key="label", spatial_size=(patch,) * 3, pos=1, neg=1, num_samples=1),
    ])


def user_prefix(patch: int, spacing: tuple[float, float, float]) -> list[Any]:
    """The deterministic part of :func:`user_chain` (everything before its crop)."""
    return list(user_chain(patch, spacing).transforms[:-1])


def run(args: argparse.Namespace) -> dict[str, Any]:
    p = args.patch_size
    transforms = user_chain(p, tuple(args.spacing)) if args.chain == "user" else None
    settings = {"sampler": {"patch_size": [p, p, p], "samples_per_volume": 1},
                "augmentation": {"flip_prob": 0.0, "shift_prob": 0.0},
                "cache": {"idle_timeout_s": 3600, "stats_dir": args.stats_dir}}
    t0 = time.perf_counter()
    cache = SmartCache.connect(args.dataset, transforms, address=args.address, namespace=args.namespace,
                               val_fraction=0.0, cache_rate=1.0, byte_budget="16GiB", settings=settings)
    build_s = time.perf_counter() - t0
    try:
        status = cache.status()
        with cache.experiment("sdk-bench", batch_size=args.batch_size, patch_size=(p, p, p), steps=10 ** 9) as exp:
            busy = wait_idle(args.idle_wait)
            with exp.batches(0) as batches:
                out = drain(batches, args.seconds)
                out["wait_s"] = batches.wait_seconds
    finally:
        cache.stop()
    out.update(build_s=build_s, busy=busy, cache_bytes=status.bytes_cached)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--address", required=True, help="GCS address of the benchmark's Ray cluster")
    ap.add_argument("--dataset", required=True, help="MSD dataset folder")
    ap.add_argument("--chain", choices=("project", "user"), required=True)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--patch-size", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 1.0))
    ap.add_argument("--idle-wait", type=float, default=30.0)
    ap.add_argument("--stats-dir", default=str(Path.home() / ".cache" / "smartcache" / "stats"))
    ap.add_argument("--namespace", default=f"bench-sdk-{uuid.uuid4().hex[:8]}")
    out = run(ap.parse_args(argv))
    print(json.dumps(out, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
