"""``smartcache sweep``: argument parsing, the plan printed at start, and Ray start-up only."""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path

from common.config import load_config
from trainer.ray_start import init_ray
from trainer.search_space import draw_trials, load_space, searched_keys
from trainer.sweep_plan import format_plan, make_plan

EPILOG = """\
space file (one config key per line; Ray Tune's own sampling):
  training.lr: loguniform(1e-4, 1e-2)
  training.optimizer: choice([adam, novograd])
  sampler.patch_size: choice([[32, 32, 32], [48, 48, 48]])
  sampler.gamma: uniform(0.5, 2.0)
  training.seed: grid([0, 1])        # every value, in every sample
  training.epochs: 20                # fixed for every trial
functions: uniform, loguniform, quniform, qloguniform, randint, choice, grid.

Trials with the same preprocessing share one cache; a searched preprocessing.* or data.*
value gives each of its values a cache of its own (the plan printed at start says which).
Writes to --out: results.md / results.json (trial, values, best Dice, time to target,
epochs, stopped early?), dice.png (Dice against time per trial), best.yaml (for
`smartcache train --config`), and trials/<name>/ (each trial's report, like `train`)."""


def cmd_sweep(args: argparse.Namespace) -> int:
    from trainer.sweep import SweepOptions, run_sweep  # Ray Tune, only once the plan is sound

    space = load_space(args.space)
    name = args.name or f"sweep-{uuid.uuid4().hex[:6]}"
    trials = draw_trials(space, args.trials, seed=args.seed)
    base = load_config(args.config, args.overrides).to_dict()  # the trials' values go on top of it
    plan = make_plan(name, base, trials, searched_keys(space), str(Path(args.data).resolve()))
    print(format_plan(plan), flush=True)
    init_ray(args.address, args.num_cpus)
    opts = SweepOptions(out_dir=Path(args.out), concurrent=args.concurrent, scheduler=args.scheduler,
                        grace_period=args.grace_period, reduction_factor=args.reduction_factor,
                        trial_num_cpus=args.trial_cpus)
    outcomes = run_sweep(plan, opts)
    return 0 if any(o.best_dice is not None for o in outcomes) else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="search hyperparameters with Ray Tune, every trial on the shared cache",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                       description="Run Ray Tune trials of `smartcache train`, each an experiment on the shared\n"
                                   "cache of its preprocessing (one fill and one copy of memory for all trials\n"
                                   "that share it). Each trial reports validation Dice to Tune; ASHA stops bad\n"
                                   "trials early. Ends with a results table, a Dice plot and the best config.")
    p.add_argument("--data", required=True, help="MSD dataset folder (with dataset.json)")
    p.add_argument("--config", default=None, help="base experiment YAML (default: built-in defaults)")
    p.add_argument("--space", required=True, help="search space YAML (see below)")
    p.add_argument("--trials", type=int, default=4,
                   help="samples of the space (default 4); each sample runs every grid() combination")
    p.add_argument("--concurrent", type=int, default=2, help="trials running at once (default 2)")
    p.add_argument("--scheduler", choices=("asha", "fifo"), default="asha",
                   help="asha: stop trials whose Dice lags at each rung (default); fifo: run every trial to the end")
    p.add_argument("--grace-period", type=int, default=1,
                   help="validations every trial gets before ASHA may stop it (default 1)")
    p.add_argument("--reduction-factor", type=int, default=2,
                   help="ASHA keeps the best 1/N of the trials at each rung (default 2)")
    p.add_argument("--trial-cpus", type=float, default=0.1,
                   help="CPUs of each trial's own process; its workers and validation ask for their own "
                        "(training.worker_num_cpus, validation.num_cpus) (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed for drawing the trials' values (default 0)")
    p.add_argument("--name", default=None, help="sweep name (default sweep-<random>); trials are NAME-t0, -t1, ...")
    p.add_argument("--out", default="runs/sweep", help="output folder (default runs/sweep)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one base config value (YAML syntax); repeatable")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
    p.set_defaults(handler=cmd_sweep)
