"""One sweep, three ways: the shared SmartCache, MONAI's fast recipe per trial, and no cache (issue 17).

The same trials (different optimiser and lr; the same epochs, steps per epoch, validation
schedule and seed, ``training.deterministic`` so that no validation is skipped; FIFO, and a
target Dice of 1.0 so that no trial stops early) run under
Ray Tune with the same number of trials at once, one arm after another, each on a fresh
local Ray cluster of its own (benchmarks/sweep_arms.py says what each arm is and how its
preparation CPU and memory are counted):

  a  shared    ``smartcache sweep``'s code path (trainer.sweep.run_sweep): one cache for all trials
  b  monai     Tune + MONAI today: each trial builds its own fast-recipe CacheDataset, nothing shared
  c  no-cache  the same sweep with cache.enabled=false: each trial's loaders prepare every volume
               every epoch

Dataset-wide CT statistics are computed once before the arms, as in benchmarks/time_to_dice.py.
The targets (issue 17): (a) finishes the sweep at least 2x sooner than (b), with at most a
third of its peak memory.

Usage:
  smartcache make-demo-data /tmp/ct --profile ct
  python benchmarks/sweep_compare.py --data /tmp/ct --config trainer/configs/ct_cpu.yaml \\
      --markdown docs/benchmarks.md
  python benchmarks/sweep_compare.py --quick --data /tmp/s5demo        # tiny: 2 trials, 2 epochs
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from sweep_arms import MONAI, NO_CACHE, SHARED, ArmRun, run_sweep_arm

REPO = Path(__file__).resolve().parents[1]

MiB = 2 ** 20
MARK_BEGIN = "<!-- sweep-benchmark:begin -->"
MARK_END = "<!-- sweep-benchmark:end -->"
SECTION_HEADING = "# Time to target Dice"
ARM_LETTERS = {"a": SHARED, "b": MONAI, "c": NO_CACHE}
ARM_TITLES = {SHARED: "(a) smartcache sweep, one shared cache", MONAI: "(b) Tune + own MONAI fast CacheDataset",
              NO_CACHE: "(c) no cache (cache.enabled=false)"}
PREP_HOW = {SHARED: "CPU of the cache's preparation tasks (fill, rotation, validation volumes)",
            MONAI: "CPU of each trial's process while it built its CacheDataset and validation volumes",
            NO_CACHE: "CPU of the trainers' DataLoader worker processes (sampled: a lower bound)"}
TRIALS = [{"training.optimizer": "adam", "training.lr": 1e-3}, {"training.optimizer": "adam", "training.lr": 3e-4},
          {"training.optimizer": "novograd", "training.lr": 1e-2},
          {"training.optimizer": "novograd", "training.lr": 3e-3}]

QUICK_SETS = ["sampler.patch_size=[16, 16, 16]", "validation.roi_size=[24, 24, 24]", "data.val_fraction=0.34",
              "cache.cache_num=3"]


def fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def format_table(runs: Sequence[ArmRun]) -> str:
    """One row per arm: wall, each trial's time to first step, preparation CPU, peak memory, best Dice."""
    lines = ["| arm | total wall (s) | time to first step per trial (s) | preparation CPU (s) | peak memory MiB "
             "(idle before) | object store peak MiB | best Dice per trial | load avg before/after |",
             "|---|---:|---|---:|---:|---:|---|---|"]
    for r in runs:
        firsts = " / ".join(fmt_s(t.first_step_s) for t in r.trials)
        dice = " / ".join("-" if t.best_dice is None else f"{t.best_dice:.3f}" for t in r.trials)
        prep = "not measured" if r.prep_cpu_s is None else f"{r.prep_cpu_s:.1f}"
        lines.append(f"| {ARM_TITLES[r.arm]} | {r.wall_s:.0f} | {firsts} | {prep} | {r.peak_bytes / MiB:.0f} "
                     f"({r.idle_bytes / MiB:.0f}) | {r.store_peak_bytes / MiB:.0f} | {dice} | "
                     f"{r.load[0]:.1f} / {r.load[1]:.1f} |")
    return "\n".join(lines)


def target_lines(runs: Sequence[ArmRun]) -> list[str]:
    """The issue's two targets, met or MISSED, when arms a and b were both run."""
    by = {r.arm: r for r in runs}
    a, b = by.get(SHARED), by.get(MONAI)
    if a is None or b is None:
        return ["targets: not checked (they compare arms a and b; run both)"]
    wall_ok, mem_ok = a.wall_s <= b.wall_s / 2, a.peak_bytes <= b.peak_bytes / 3
    return [f"- (a) total wall <= (b) / 2: **{'met' if wall_ok else 'MISSED'}** ({a.wall_s:.0f} s vs "
            f"{b.wall_s:.0f} s = {b.wall_s / a.wall_s:.2f}x sooner)",
            f"- (a) peak memory <= (b) / 3: **{'met' if mem_ok else 'MISSED'}** ({a.peak_bytes / MiB:.0f} vs "
            f"{b.peak_bytes / MiB:.0f} MiB = {a.peak_bytes / b.peak_bytes:.2f}x of (b))"]


def trials_lines(trials: Sequence[dict[str, Any]]) -> str:
    return "trials (in the per-trial columns' order): " + "; ".join(
        f"{i}: {t['training.optimizer']} lr {t['training.lr']:g}" for i, t in enumerate(trials))


def regime(cfg: Any, catalog: Any, args: argparse.Namespace, num_cpus: int) -> str:
    """One line naming what was measured: cores, cases, spacing, crops, epochs, steps, concurrency."""
    t, s = cfg.training, cfg.sampler
    return (f"CPU, {os.cpu_count()} cores (Ray given {num_cpus} logical CPUs); {len(catalog.train)} training / "
            f"{len(catalog.val)} validation cases at {'x'.join(f'{v:g}' for v in cfg.preprocessing.spacing)} mm; "
            f"shared pool {cfg.cache.pool_size(len(catalog.train))} of {len(catalog.train)} (replace_rate "
            f"{cfg.cache.replace_rate:g}); crops {'x'.join(map(str, s.patch_size))}, {s.samples_per_volume} per "
            f"volume, batch {t.batch_size}; {args.trials_epochs} epochs x {args.steps_per_epoch} steps, validation "
            f"every {args.val_interval} epochs (and the last); C = {args.concurrent} trials at once; seed {t.seed}")


def write_markdown(path: Path, text: str) -> None:
    """Replace the section between the markers; if absent, put it at the end of the Time-to-Dice chapter."""
    section = f"{MARK_BEGIN}\n{text}\n{MARK_END}\n"
    old = path.read_text() if path.is_file() else "# Benchmarks\n"
    if MARK_BEGIN in old and MARK_END in old:
        head, rest = old.split(MARK_BEGIN, 1)
        path.write_text(head + section + rest.split(MARK_END, 1)[1].lstrip("\n"))
        return
    lines = old.splitlines(keepends=True)
    start = next((i for i, x in enumerate(lines) if x.startswith(SECTION_HEADING)), None)
    if start is None:
        path.write_text(old.rstrip("\n") + "\n\n" + section)
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("# ")), len(lines))
    body = "".join(lines[:end]).rstrip("\n") + "\n\n" + section
    path.write_text(body + ("\n" + "".join(lines[end:]) if end < len(lines) else ""))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="MSD dataset folder (make-demo-data DIR --profile ct)")
    ap.add_argument("--config", default=str(REPO / "trainer/configs/ct_cpu.yaml"), help="base experiment YAML")
    ap.add_argument("--arms", nargs="+", choices=sorted(ARM_LETTERS), default=["a", "b", "c"],
                    help="a: shared cache, b: Tune + own MONAI CacheDataset, c: no cache (default: all, in order)")
    ap.add_argument("--trials-epochs", type=int, default=4, help="epochs per trial (default 4)")
    ap.add_argument("--steps-per-epoch", type=int, default=10, help="steps per epoch (default 10)")
    ap.add_argument("--val-interval", type=int, default=2, help="validate every N epochs and the last (default 2)")
    ap.add_argument("--trials", type=int, default=len(TRIALS), choices=range(1, len(TRIALS) + 1),
                    help=f"how many of the {len(TRIALS)} trials to run (default all)")
    ap.add_argument("--concurrent", type=int, default=2, help="trials at once in every arm (default 2)")
    ap.add_argument("--num-cpus", type=int, default=None,
                    help="Ray's logical CPUs (default: enough for --concurrent trials and the cache's tasks)")
    ap.add_argument("--out", type=Path, default=Path("runs/sweep_compare"), help="output folder")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the section into this file")
    ap.add_argument("--quick", action="store_true", help="tiny: 2 trials, 2 epochs x 3 steps, validation each epoch")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = ap.parse_args(argv)
    if args.quick:  # demo phantoms of 48 voxels (26-31 at 2 mm): 16^3 crops, 2 validation cases
        args.trials, args.trials_epochs, args.steps_per_epoch, args.val_interval = 2, 2, 3, 1
        args.overrides = [*QUICK_SETS, *args.overrides]
    return args


def base_overrides(args: argparse.Namespace) -> list[str]:
    """What every arm shares: the data, epochs, steps, schedule; no early stop; no disk tier to read back.

    ``training.deterministic``: a shared-cache trial otherwise skips a validation that falls due while
    the previous one still runs (the last epoch's, in a short sweep), and MONAI's trials validate
    inline at every due epoch; with it, every arm validates at the same epochs and waits for it.
    """
    return [f"data.dataset_dir={Path(args.data).resolve()}", f"training.epochs={args.trials_epochs}",
            f"training.steps_per_epoch={args.steps_per_epoch}", f"validation.interval={args.val_interval}",
            "training.target_dice=1.0", "training.time_limit_s=null", "cache.disk_dir=null",
            "training.deterministic=true", *args.overrides]


def logical_cpus(cfg: Any, concurrent: int) -> int:
    """Enough logical CPUs for ``concurrent`` shared-cache trials (process, trainer, validator) and one task."""
    per_trial = 0.1 + cfg.training.worker_num_cpus + cfg.validation.num_cpus
    return max(os.cpu_count() or 1, math.ceil(concurrent * per_trial + cfg.cache.task_num_cpus + 0.25))


def start_ray(num_cpus: int, attempts: int = 3) -> None:
    """A fresh local Ray cluster; tried again when it times out starting (Ray waits 30 s for its agents,
    which a busy 2-core machine can exceed), so a loaded machine costs a retry, not the whole run."""
    import ray  # only once an arm runs

    path = os.pathsep.join([str(REPO), str(REPO / "benchmarks"), os.environ.get("PYTHONPATH", "")])
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": path, "RAY_TRAIN_V2_ENABLED": "1"}})
            return
        except Exception as err:  # Ray raises a bare Exception for this
            ray.shutdown()
            if "timed out during startup" not in str(err) or attempt == attempts:
                raise
            print(f"Ray timed out starting (attempt {attempt} of {attempts}; load average "
                  f"{os.getloadavg()[0]:.1f}); starting it again", flush=True)


def run_arm(arm: str, args: argparse.Namespace, num_cpus: int, catalog: Any, prep: Any) -> ArmRun:
    """One arm on a fresh local Ray cluster of its own (nothing left over from the previous arm)."""
    import ray  # Ray, the config and the plan: only once an arm runs (the bookkeeping is unit-tested without)

    from common.config import load_config
    from trainer.sweep_plan import make_plan

    trials = TRIALS[:args.trials]
    base = load_config(args.config, base_overrides(args)).to_dict()
    start_ray(num_cpus)
    try:
        if arm == MONAI:
            from sweep_monai import run_monai_arm  # torch and MONAI: only for the arm that uses them here

            plan = make_plan("bench-monai", base, trials, sorted(trials[0]), str(Path(args.data).resolve()))
            return run_monai_arm(plan, catalog, prep, args.out / arm, args.concurrent)
        return run_sweep_arm(arm, base, trials, str(Path(args.data).resolve()), args.out / arm, args.concurrent)
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from common.catalog import fingerprint, load_catalog  # torch and MONAI come with these: not for --help
    from common.config import load_config
    from common.preprocess import build_preprocessor

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    cfg = load_config(args.config, base_overrides(args))
    catalog = load_catalog(cfg.data.dataset_dir, cfg.data)
    num_cpus = args.num_cpus or logical_cpus(cfg, args.concurrent)
    t0 = time.time()
    prep = build_preprocessor(catalog, cfg.preprocessing, cfg.sampler.patch_size, cfg.cache.stats_path(),
                              fingerprint(catalog, cfg.preprocessing))
    header = [f"Command: `python benchmarks/sweep_compare.py {' '.join(sys.argv[1:] if argv is None else argv)}`  ",
              f"Regime: {regime(cfg, catalog, args, num_cpus)}  ",
              f"Dataset-wide CT statistics computed once before the arms: {time.time() - t0:.0f} s  ",
              trials_lines(TRIALS[:args.trials])]
    print("\n".join(header), flush=True)
    runs = []
    for letter in args.arms:
        arm = ARM_LETTERS[letter]
        print(f"\n=== arm {letter}: {ARM_TITLES[arm]}  (load average {os.getloadavg()[0]:.1f})", flush=True)
        runs.append(run_arm(arm, args, num_cpus, catalog, prep))
        print(f"=== arm {letter} done in {runs[-1].wall_s:.0f} s", flush=True)
    how = [f"- preparation CPU, {ARM_TITLES[r.arm][:3]}: {PREP_HOW[r.arm]}" for r in runs]
    text = "\n".join([*header, "", format_table(runs), "", *how, "", "Targets:", *target_lines(runs)])
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text + "\n")
    if args.markdown is not None:
        title = f"## Sweep: {args.trials} trials, one shared cache against a MONAI cache per trial, and no cache"
        write_markdown(args.markdown, f"{title}\n\n{text}")
        print(f"\nwrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
