"""Time to a target Dice: the plain baseline against the full method, and each technique switched off alone.

The paper's Tables 1 and 3, on this machine. Every arm trains the same network on the same
data with the same seed, one after another in one Ray session; each starts its own cache
(a fresh namespace), so the cached arms pay for filling it inside their time.

  baseline      no cache (load + preprocess every volume every epoch), fixed 1:1 crops, Adam, fp32
  full          shared cache, adaptive pos:neg ratio, NovoGrad, AMP where the device has it
  no-cache      full, but trainers preprocess every volume every epoch
  no-adaptive   full, but the ratio stays 1:1
  no-novograd   full, but Adam
  no-amp        full, but fp32 (only measured on CUDA: AMP is off on CPU unless asked for bf16)

Usage:
  python benchmarks/time_to_dice.py --data runs/demo/data --config trainer/configs/demo_cpu.yaml
  python benchmarks/time_to_dice.py --data /tmp/devdata/BrainDev --config trainer/configs/braindev_cpu.yaml \\
      --time-limit 900 --arms baseline full
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from common.config import ExperimentConfig, load_config

ARMS: dict[str, list[str]] = {
    "baseline": ["cache.enabled=false", "sampler.adaptive=false", "training.optimizer=adam", "training.amp=false"],
    "full": ["training.optimizer=novograd", "training.amp=true"],
    "no-cache": ["cache.enabled=false", "training.optimizer=novograd", "training.amp=true"],
    "no-adaptive": ["sampler.adaptive=false", "training.optimizer=novograd", "training.amp=true"],
    "no-novograd": ["training.optimizer=adam", "training.amp=true"],
    "no-amp": ["training.optimizer=novograd", "training.amp=false"],
}


@dataclass
class ArmResult:
    arm: str
    reached: bool
    time_to_target_s: float | None
    iterations_to_target: int | None
    best_dice: float
    epochs: int
    iterations: int
    wall_s: float
    fill_s: float
    wait_fraction: float
    validation_s: float


def _iterations(out: Path, until_s: float | None) -> tuple[int, int | None]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = sorted((r for r in rows if r["kind"] == "train" and r.get("rank", 0) == 0), key=lambda r: r["epoch"])
    total = sum(r["steps"] for r in train)
    if until_s is None:
        return total, None
    return total, sum(r["steps"] for r in train if r["time_s"] <= until_s)


def run_arm(arm: str, base: ExperimentConfig, config_path: str | None, data: str, out: Path,
            extra: list[str], time_limit: float) -> ArmResult:
    from cache_service.client import stop_caches
    from trainer.launcher import LaunchOptions, run_experiment

    overrides = [f"data.dataset_dir={data}", f"name={arm}",
                 f"cache.namespace=ttd-{uuid.uuid4().hex[:6]}", f"training.time_limit_s={time_limit}",
                 "training.epochs=100000",  # the time limit, not an epoch cap, ends an arm
                 *ARMS[arm], *extra]
    cfg = load_config(config_path, overrides)
    report = run_experiment(cfg, LaunchOptions(out / arm, show_progress=True))
    total, to_target = _iterations(out / arm, report.time_to_target_s)
    stop_caches(cfg.cache.namespace)
    return ArmResult(arm, report.reached_target, report.time_to_target_s, to_target, report.best_mean_dice,
                     report.epochs, total, report.wall_seconds, report.cache_fill_seconds,
                     report.data_wait_fraction, report.validation_seconds)


def format_table(results: list[ArmResult], target: float, time_limit: float) -> str:
    base = next((r for r in results if r.arm == "baseline"), None)
    lines = [f"target mean foreground Dice {target:g}, time limit {time_limit:.0f} s per arm",
             "| arm | reached | time to target (s) | iterations to target | speed-up vs baseline | best Dice | "
             "epochs | wall (s) | cache fill (s) | data wait | validation (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if base is None or r.time_to_target_s is None:
            speed = "n/a"
        elif base.time_to_target_s is None:
            speed = f">= {time_limit / r.time_to_target_s:.1f}x (baseline missed)"
        else:
            speed = f"{base.time_to_target_s / r.time_to_target_s:.1f}x"
        ttt = f"{r.time_to_target_s:.0f}" if r.time_to_target_s is not None else f"not in {time_limit:.0f}"
        lines.append(f"| {r.arm} | {'yes' if r.reached else 'no'} | {ttt} | {r.iterations_to_target or '-'} | "
                     f"{speed} | {r.best_dice:.3f} | {r.epochs} | {r.wall_s:.0f} | {r.fill_s:.0f} | "
                     f"{100 * r.wait_fraction:.1f} % | {r.validation_s:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="MSD dataset folder")
    parser.add_argument("--config", default=None, help="experiment YAML the arms start from")
    parser.add_argument("--arms", nargs="+", default=["baseline", "full", "no-cache", "no-adaptive", "no-novograd"],
                        choices=list(ARMS), help="arms to run, in order")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds per arm (default 300)")
    parser.add_argument("--out", default="runs/time_to_dice", help="output folder")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()

    import ray

    ray.init(address="local", num_cpus=args.num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)
    base = load_config(args.config, [f"data.dataset_dir={args.data}", *args.overrides])
    out = Path(args.out)
    results = []
    for arm in args.arms:
        print(f"\n=== arm {arm}: {' '.join(ARMS[arm])}")
        results.append(run_arm(arm, base, args.config, args.data, out, args.overrides, args.time_limit))
    table = format_table(results, base.training.target_dice, args.time_limit)
    print("\n" + table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
