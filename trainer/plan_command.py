"""``smartcache plan``: fingerprint the dataset, probe (or describe) the machine, print and write the plan.

``smartcache train`` without ``--config`` calls :func:`plan_run` too, so a new dataset trains
with values sized to it and to the cluster instead of the GPU-sized defaults.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from common.catalog import load_catalog
from common.config import load_config
from common.planning.machine import Machine, described_machine
from common.planning.plan import Plan, make_plan
from trainer.ray_start import init_ray

PLAN_FILE = "plan.yaml"


def plan_run(data: str, overrides: Sequence[str] = (), machine: Machine | None = None,
             refresh: bool = False) -> Plan:
    """The plan for ``data`` on the connected Ray cluster (or on ``machine`` when described)."""
    from trainer.plan_inputs import dataset_fingerprint, probe_machine  # Ray only where a plan is made

    defaults = load_config(None, [f"data.dataset_dir={data}", *overrides])
    catalog = load_catalog(data, defaults.data)
    fp = dataset_fingerprint(catalog, defaults.cache.stats_path(), defaults.cache.task_num_cpus, refresh)
    return make_plan(fp, machine or probe_machine())


def write_plan(plan: Plan, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(plan.to_yaml())
    return path


def cmd_plan(args: argparse.Namespace) -> int:
    init_ray(args.address, args.num_cpus)
    machine = described_machine(args.machine) if args.machine else None
    plan = plan_run(args.data, args.overrides, machine, args.refresh)
    print(plan.table())
    out = write_plan(plan, Path(args.out))
    print(f"\nwrote {out}: smartcache train --data {args.data} --config {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="plan a config from the dataset's fingerprint and the cluster",
                       description="Compute (or reuse) the dataset fingerprint with Ray tasks, probe the cluster's "
                                   "CPUs, memory, object store and GPUs, and choose spacing, normalisation, patch, "
                                   "network, batch, pool and validation values, each with its reason. Prints a "
                                   "table and writes a commented YAML that `smartcache train --config` takes.")
    p.add_argument("--data", required=True, help="MSD dataset folder (with dataset.json)")
    p.add_argument("--out", default=PLAN_FILE, help=f"where to write the plan (default {PLAN_FILE})")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
    p.add_argument("--machine", default=None, metavar="NODESxCPUS[:GPUSxMEM]",
                   help="plan for a described machine instead of the probed one, e.g. 1x64:8x80GiB")
    p.add_argument("--refresh", action="store_true", help="recompute the stored dataset fingerprint")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="settings the fingerprint needs (e.g. cache.stats_dir=...)")
    p.set_defaults(handler=cmd_plan)
