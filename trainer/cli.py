"""The ``smartcache`` command line: one subcommand per job, each with its own ``--help``."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from cache_service import cli as service_cli
from common.errors import SmartCacheError
from trainer import commands, plan_command, sweep_command

Handler = Callable[[argparse.Namespace], int]


def _make_demo_data(args: argparse.Namespace) -> int:
    from common.demo_data import make_demo_data  # nibabel and the phantom maker: only for this command

    out = make_demo_data(args.dir, cases=args.cases, size=args.size, seed=args.seed, profile=args.profile,
                         progress=True)
    grid = "512^2 x 80-200 slices, int16 HU" if args.profile == "ct" else f"{args.size} voxels in-plane"
    print(f"wrote {args.profile} cases ({grid}) and dataset.json to {out}")
    return 0


def _add_make_demo_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-demo-data", help="write a synthetic CT-like dataset in MSD layout",
                       description="Write synthetic CT-like phantoms (HU ranges, anisotropic spacing, non-RAS "
                                   "affines, an organ-like class and a lesion-like class) with dataset.json. "
                                   "--profile ct writes CT-sized cases (512^2 in-plane at 0.6-0.9 mm, 80-200 "
                                   "slices of 1.5-5 mm, gzip, about 40-60 MB each) whose loading and resampling "
                                   "cost seconds like real CT. Deterministic for a given seed.")
    p.add_argument("dir", help="output folder (created if missing)")
    p.add_argument("--profile", choices=("phantom", "ct"), default="phantom",
                   help="phantom: small quick volumes (default); ct: CT-sized volumes like MSD spleen")
    p.add_argument("--cases", type=int, default=None, help="number of cases (default 8; 40 with --profile ct)")
    p.add_argument("--size", type=int, default=64, help="in-plane voxels per axis of the phantom profile "
                                                        "(default 64; the ct profile is always 512)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(handler=_make_demo_data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartcache",
        description="Shared SmartCache data service on Ray for fast 3D medical image segmentation training.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_make_demo_data(sub)
    commands.register(sub)
    plan_command.register(sub)
    service_cli.register(sub)
    sweep_command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except SmartCacheError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
