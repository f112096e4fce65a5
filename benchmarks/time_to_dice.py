"""Time to a target Dice: the plain baseline, MONAI's fast recipe and the full method (and ablations).

The paper's Tables 1 and 3, on this machine. Every arm trains the same network on the same
data with the same seed, one after another; each cached arm starts its own cache (a fresh
namespace), so it pays for filling it inside its time. Dataset-wide CT statistics are
computed once before the arms (every arm would otherwise repeat the same pass).

  baseline      no cache: a DataLoader with worker processes loads and preprocesses every volume
                every epoch; fixed 1:1 crops, Adam, fp32 (the config's loss, like every arm)
                and glibc's malloc defaults, as a plain loop runs
  monai-fast    MONAI's fast-training recipe (benchmarks/monai_fast.py): CacheDataset of every
                training volume with cached fg/bg indices, ThreadDataLoader, DiceCE, Novograd
  monai-fast-heap  the same, in a process given the trainers' allocator settings (common/heap.py;
                they stay in this process: list it after monai-fast)
  full          shared SmartCache (rotating when cache_num < N), adaptive pos:neg ratio, NovoGrad
                at its default lr, AMP where the device has it
  full-in-process  full, with its one worker and its validation in the launching process
                (training.runner=in_process: no Ray Train worker or validation actor to start)
  no-cache      full, but trainers load and preprocess every volume every epoch
  no-adaptive   full, but the ratio stays 1:1
  no-novograd   full, but Adam
  no-amp        full, but fp32 (on a CPU AMP is bf16, where training.cpu_bf16 asks for it)
  no-heap       full, but the trainers and validation keep glibc's malloc defaults

With ``--steps-per-epoch pass`` (the default) every arm's epoch is one pass of the whole
training set's worth of steps, so a cached arm with a pool smaller than the training set
cycles its pool, and validation (every ``validation.interval`` epochs) comes after the same
number of steps in every arm. ``--steps-per-epoch N`` does the same with N steps (the
baseline then loads a fresh random N * batch / samples_per_volume volumes per epoch); the
time limit is checked at epoch ends, so shorter epochs overshoot it less.

Usage:
  smartcache make-demo-data /tmp/ct --profile ct
  python benchmarks/time_to_dice.py --data /tmp/ct --config trainer/configs/ct_cpu.yaml --time-limit 400
  python benchmarks/time_to_dice.py --data runs/demo/data --config trainer/configs/demo_cpu.yaml \\
      --arms baseline full no-cache no-adaptive no-novograd --steps-per-epoch config
  python benchmarks/time_to_dice.py --data /tmp/ct --config trainer/configs/ct_cpu.yaml \\
      --arms monai-fast full full-in-process --seeds 0 1 2   # plus the median over seeds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
import uuid
from dataclasses import replace
from pathlib import Path

from arm_result import ArmResult
from seed_summary import format_seed_summary
from common.catalog import Catalog, fingerprint, load_catalog
from common.config import ExperimentConfig, load_config

#: the paper's method as this project runs it: NovoGrad at its own default lr with the default loss
#: (DiceCE; see docs/benchmarks.md, "NovoGrad"). ``lr=null``: each optimiser's default (config.DEFAULT_LR).
FULL_METHOD = ["training.optimizer=novograd", "training.lr=null", "training.amp=true"]
ADAM = ["training.optimizer=adam", "training.lr=null"]
MONAI_FAST, MONAI_FAST_HEAP = "monai-fast", "monai-fast-heap"
#: glibc's own malloc settings, as a plain PyTorch or MONAI loop runs (common/heap.py)
PLAIN_HEAP = ["training.heap_keep_mib=0"]
ARMS: dict[str, list[str]] = {
    "baseline": ["cache.enabled=false", "sampler.adaptive=false", *ADAM, "training.amp=false", *PLAIN_HEAP],
    MONAI_FAST: [*ADAM, "training.amp=true", *PLAIN_HEAP],  # monai_fast.py: Novograd at 10x Adam's lr, DiceCE
    MONAI_FAST_HEAP: [*ADAM, "training.amp=true"],  # the same with this project's allocator settings
    "full": [*FULL_METHOD],
    "full-in-process": [*FULL_METHOD, "training.runner=in_process"],
    "no-cache": ["cache.enabled=false", *FULL_METHOD],
    "no-adaptive": ["sampler.adaptive=false", *FULL_METHOD],
    "no-novograd": [*FULL_METHOD, *ADAM],
    "no-amp": [*FULL_METHOD, "training.amp=false"],
    "no-heap": [*FULL_METHOD, *PLAIN_HEAP],
}


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def step_counts(rows: list[dict], target: float) -> tuple[int, int | None, float]:
    """(total steps, steps to ``target``, mean compute seconds per step) of rank 0.

    The steps to the target are those through the epoch whose weights first validated at or above
    it, as MONAI's inline validation counts them. Counting the steps done by the time that result
    was known would add the epochs trained while a validation ran beside training.
    """
    train = sorted((r for r in rows if r["kind"] == "train" and r.get("rank", 0) == 0), key=lambda r: r["epoch"])
    total = sum(r["steps"] for r in train)
    step_s = sum(r["step_seconds"] for r in train) / max(1, total)
    validations = sorted((r for r in rows if r["kind"] == "validation"), key=lambda r: r["time_s"])
    hit = next((r for r in validations if r["mean_dice"] >= target), None)
    if hit is None:
        return total, None, step_s
    return total, sum(r["steps"] for r in train if r["epoch"] <= hit["epoch"]), step_s


def _overlap(a0: float, a1: float, spans: list[tuple[float, float]]) -> float:
    """Seconds of [a0, a1] covered by the (disjoint) spans."""
    return sum(max(0.0, min(a1, b1) - max(a0, b0)) for b0, b1 in spans)


def step_s_beside(rows: list[dict]) -> tuple[float | None, float | None]:
    """Compute seconds per step of rank 0's epochs with a validation running beside them for at least half the
    epoch, and of those with none running at all: does the validation beside training slow its steps?

    An epoch spans from the previous epoch's end to its own (the first epoch, whose start is not
    recorded, is left out); a validation from its end minus its duration to its end.
    """
    train = sorted((r for r in rows if r["kind"] == "train" and r.get("rank", 0) == 0), key=lambda r: r["epoch"])
    spans = [(r["time_s"] - r["seconds"], r["time_s"]) for r in rows if r["kind"] == "validation"]
    beside: list[tuple[float, int]] = []
    alone: list[tuple[float, int]] = []
    for prev, row in zip(train, train[1:]):
        length = row["time_s"] - prev["time_s"]
        covered = _overlap(prev["time_s"], row["time_s"], spans) / length if length > 0 else 0.0
        if covered >= 0.5 or covered == 0.0:
            (beside if covered else alone).append((row["step_seconds"], row["steps"]))
    mean = [sum(s for s, _ in group) / sum(n for _, n in group) if group else None for group in (beside, alone)]
    return mean[0], mean[1]


def run_arm(arm: str, config_path: str | None, out: Path, overrides: list[str], time_limit: float,
            folder: str | None = None) -> ArmResult:
    """One arm through the project's launcher (every arm but monai-fast), writing under ``out / folder``."""
    from cache_service.client import stop_caches
    from trainer.launcher import LaunchOptions, run_experiment

    load0 = os.getloadavg()[0]
    # a disk tier of the arm's own, empty at its start (as on a first run): an arm never reads volumes
    # that an earlier arm prepared (the default tier is shared by every run on the machine)
    run_dir = out / (folder or arm)
    disk = (run_dir / "disk_tier").resolve()
    shutil.rmtree(disk, ignore_errors=True)
    cfg = load_config(config_path, [f"name={arm}", f"cache.namespace=ttd-{uuid.uuid4().hex[:6]}",
                                    f"cache.disk_dir={disk}", f"training.time_limit_s={time_limit}",
                                    "training.epochs=100000",  # the time limit, not an epoch cap, ends an arm
                                    *ARMS[arm], *overrides])
    try:
        report = run_experiment(cfg, LaunchOptions(run_dir, show_progress=True))
    finally:
        stop_caches(cfg.cache.namespace)
    rows = _rows(run_dir)
    total, to_target, step_s = step_counts(rows, cfg.training.target_dice)
    return ArmResult(arm, report.reached_target, report.time_to_target_s, to_target, report.best_mean_dice,
                     tuple(report.dice_per_class.values()), report.epochs, total, report.wall_seconds,
                     report.cache_fill_seconds, report.data_wait_fraction, step_s, report.validation_seconds,
                     (load0, os.getloadavg()[0]),
                     tuple((r["time_s"], r["mean_dice"]) for r in rows if r["kind"] == "validation"),
                     step_s_beside(rows))


def run_monai_arm(arm: str, config_path: str | None, overrides: list[str], catalog: Catalog,
                  time_limit: float) -> ArmResult:
    """MONAI's fast recipe in this process (see benchmarks/monai_fast.py); ``monai-fast-heap`` first gives this
    process the allocator settings the project's trainers run with, which stay for the arms after it."""
    import torch

    from common.heap import keep_freed_memory
    from common.preprocess import build_preprocessor
    from monai_fast import run_monai_fast

    load0 = os.getloadavg()[0]
    cfg = load_config(config_path, [f"name={arm}", *ARMS[arm], *overrides])
    keep_freed_memory(cfg.training.heap_keep_mib)  # 0 for monai-fast: glibc's defaults, as MONAI's users run
    torch.set_num_threads(max(1, int(cfg.training.worker_num_cpus)))  # the trainers' share, as Ray gives them
    prep = build_preprocessor(catalog, cfg.preprocessing, cfg.sampler.patch_size, cfg.cache.stats_path(),
                              fingerprint(catalog, cfg.preprocessing))
    result = run_monai_fast(cfg, catalog, prep, time_limit)
    return replace(result, arm=arm, load=(load0, os.getloadavg()[0]))


def regime(cfg: ExperimentConfig, catalog: Catalog) -> str:
    """One line naming what was measured: hardware, data sizes, spacing, crops, network."""
    t, s = cfg.training, cfg.sampler
    device = "GPU" if t.use_gpu else f"CPU, {os.cpu_count()} cores"
    return (f"{device}; {len(catalog.train)} training / {len(catalog.val)} validation cases, resampled to "
            f"{'x'.join(f'{v:g}' for v in cfg.preprocessing.spacing)} mm; pool {cfg.cache.pool_size(len(catalog.train))}"
            f" of {len(catalog.train)} (replace_rate {cfg.cache.replace_rate:g}); {t.num_workers} trainer(s) x "
            f"{t.worker_num_cpus:g} CPU; crops {'x'.join(map(str, s.patch_size))}, {s.samples_per_volume} per volume,"
            f" batch {t.batch_size}; U-Net channels {list(t.channels)}, {t.num_res_units} res units; validation "
            f"every {cfg.validation.interval} epoch(s), window {'x'.join(map(str, cfg.validation.roi_size))}")


def format_table(results: list[ArmResult], target: float, time_limit: float,
                 milestones: tuple[float, ...] = ()) -> str:
    base = next((r for r in results if r.arm == "baseline"), None)
    reach = " / ".join(f"{m:g}" for m in milestones)
    lines = [f"target mean foreground Dice {target:g}, time limit {time_limit:.0f} s per arm",
             "| arm | reached | time to target (s) | steps to target | speed-up vs baseline | best Dice (per class) | "
             f"time to Dice {reach} (s) | epochs | steps | wall (s) | cache fill (s) | data wait | "
             "compute per step (s) | ... with a validation beside / none | validation (s) | load avg before/after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if base is None or r.time_to_target_s is None:
            speed = "n/a"
        elif base.time_to_target_s is None:
            speed = f">= {time_limit / r.time_to_target_s:.1f}x (baseline missed)"
        else:
            speed = f"{base.time_to_target_s / r.time_to_target_s:.1f}x"
        ttt = f"{r.time_to_target_s:.0f}" if r.time_to_target_s is not None else f"not in {time_limit:.0f}"
        per_class = ", ".join(f"{d:.2f}" for d in r.dice_per_class)
        times = " / ".join("-" if r.time_to(m) is None else f"{r.time_to(m):.0f}" for m in milestones)
        beside = " / ".join("-" if v is None else f"{v:.2f}" for v in r.step_s_beside)
        lines.append(f"| {r.arm} | {'yes' if r.reached else 'no'} | {ttt} | {r.steps_to_target or '-'} | {speed} | "
                     f"{r.best_dice:.3f} ({per_class}) | {times} | {r.epochs} | {r.steps} | {r.wall_s:.0f} | {r.fill_s:.0f} | "
                     f"{100 * r.wait_fraction:.1f} % | {r.step_s:.2f} | {beside} | {r.validation_s:.0f} | "
                     f"{r.load[0]:.1f} / {r.load[1]:.1f} |")
    return "\n".join(lines)


def pass_steps(cfg: ExperimentConfig, catalog: Catalog) -> int:
    """Steps per worker for one pass over the whole training set (what the baseline's epoch is)."""
    per_worker = math.ceil(len(catalog.train) / cfg.training.num_workers)
    return math.ceil(per_worker * cfg.sampler.samples_per_volume / cfg.training.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="MSD dataset folder")
    parser.add_argument("--config", default=None, help="experiment YAML the arms start from")
    parser.add_argument("--arms", nargs="+", default=["baseline", MONAI_FAST, "full"], choices=list(ARMS),
                        help="arms to run, in order")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds per arm (default 300)")
    parser.add_argument("--steps-per-epoch", default="pass",
                        help="pass: an epoch is one pass of the training set in every arm (default); a number N: "
                             "N steps per epoch in every arm (shorter epochs check the time limit more often); "
                             "config: training.steps_per_epoch as configured")
    parser.add_argument("--milestones", type=float, nargs="*", default=[0.5, 0.6, 0.7],
                        help="also report the time to these mean Dice values (default 0.5 0.6 0.7)")
    parser.add_argument("--out", default="runs/time_to_dice", help="output folder")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="run every arm once per training.seed (seed-major) and add a table of the times to "
                             "target per seed, their median and its ratio to monai-fast's (default: the config's "
                             "seed, one run per arm)")
    args = parser.parse_args()

    import ray

    from common.preprocess import build_preprocessor

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    ray.init(address="local", num_cpus=args.num_cpus or os.cpu_count(), include_dashboard=False,
             log_to_driver=False)
    overrides = [f"data.dataset_dir={args.data}", *args.overrides]
    base = load_config(args.config, overrides)
    catalog = load_catalog(base.data.dataset_dir, base.data)
    if args.steps_per_epoch == "pass":
        overrides.append(f"training.steps_per_epoch={pass_steps(base, catalog)}")
    elif args.steps_per_epoch != "config":
        overrides.append(f"training.steps_per_epoch={int(args.steps_per_epoch)}")
    t0 = time.time()
    build_preprocessor(catalog, base.preprocessing, None, base.cache.stats_path(), fingerprint(catalog, base.preprocessing))
    header = [f"regime: {regime(load_config(args.config, overrides), catalog)}",
              f"dataset-wide CT statistics computed once before the arms: {time.time() - t0:.0f} s"]
    print("\n".join(header))
    out = Path(args.out)
    runs = []
    for seed in args.seeds or [None]:
        seeded = overrides if seed is None else [*overrides, f"training.seed={seed}"]
        for arm in args.arms:
            label = arm if seed is None else f"{arm}-seed{seed}"
            print(f"\n=== arm {label}: {' '.join(ARMS[arm])}  (load average {os.getloadavg()[0]:.1f})")
            if arm in (MONAI_FAST, MONAI_FAST_HEAP):
                result = run_monai_arm(arm, args.config, seeded, catalog, args.time_limit)
            else:
                result = run_arm(arm, args.config, out, seeded, args.time_limit, label)
            runs.append((seed, result))
    results = [replace(r, arm=f"{r.arm} (seed {seed})") if args.seeds else r for seed, r in runs]
    tables = [format_table(results, base.training.target_dice, args.time_limit, tuple(args.milestones))]
    if args.seeds:
        tables.append(format_seed_summary(runs, args.time_limit, MONAI_FAST))
    table = "\n".join(header) + "\n" + "\n\n".join(tables)
    print("\n" + table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
