"""One training step on CPU under glibc's malloc defaults and under the trainers' settings.

A step allocates and frees the same large tensors every time; with glibc's defaults they come
from fresh pages each step (mmapped blocks, a trimmed heap, per-thread arenas), so part of the
step is the kernel mapping and zeroing memory. This script runs the config's U-Net, loss and
optimiser on random crops in a fresh process per setting (glibc reads its environment once) and
prints the median step, the process's user and system CPU and its peak resident memory:

  python benchmarks/step_alloc.py --config trainer/configs/ct_cpu.yaml

Settings: glibc's defaults; ``training.heap_keep_mib`` (``common/heap.py``) as environment
variables; each of those with the loop in a thread of its own, as Ray Train and the in-process
runner run it. Threads: the trainer's share (``training.worker_num_cpus``), as Ray gives it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _steps(config: str, steps: int, in_thread: bool) -> dict[str, float]:
    """This process: ``steps`` training steps on random crops; the median after the first 5."""
    import torch

    from common.config import load_config
    from trainer.model import build_loss, build_model, build_optimizer

    cfg = load_config(config, [])
    torch.set_num_threads(max(1, int(cfg.training.worker_num_cpus)))
    model = build_model(cfg.training, 1, 3)
    loss_fn, optimizer = build_loss(cfg.training.loss), build_optimizer(cfg.training, model.parameters())
    shape = (cfg.training.batch_size, 1, *cfg.sampler.patch_size)
    x, y = torch.randn(shape), torch.randint(0, 3, shape)
    times: list[float] = []

    def loop() -> None:
        for _ in range(steps):
            t = time.perf_counter()
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
            times.append(time.perf_counter() - t)

    if in_thread:
        worker = threading.Thread(target=loop)
        worker.start()
        worker.join()
    else:
        loop()
    cpu = os.times()
    return {"step_s": statistics.median(times[5:]), "user_s": cpu.user, "system_s": cpu.system,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _run(config: str, steps: int, env: dict[str, str], in_thread: bool) -> dict[str, float]:
    """One setting in a fresh interpreter, so that glibc starts with its environment."""
    cmd = [sys.executable, __file__, "--config", config, "--steps", str(steps), "--child"]
    if in_thread:
        cmd.append("--thread")
    out = subprocess.run(cmd, env={**os.environ, **env}, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "trainer/configs/ct_cpu.yaml"), help="experiment YAML")
    ap.add_argument("--steps", type=int, default=25, help="steps per setting (the first 5 are not counted)")
    ap.add_argument("--repeats", type=int, default=2, help="fresh processes per setting")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--thread", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_steps(args.config, args.steps, args.thread)))
        return
    from common.config import TrainingConfig, load_config
    from common.heap import heap_env

    cfg = load_config(args.config, [])  # a config that switches the settings off is timed with the default
    keep = cfg.training.heap_keep_mib or TrainingConfig.model_fields["heap_keep_mib"].default
    settings = [("glibc's defaults", {}, False), (f"heap_keep_mib={keep}", heap_env(keep), False),
                ("glibc's defaults, loop in a thread", {}, True),
                (f"heap_keep_mib={keep}, loop in a thread", heap_env(keep), True)]
    print(f"regime: CPU, {os.cpu_count()} cores, {platform.libc_ver()[0]} {platform.libc_ver()[1]}; "
          f"{cfg.training.worker_num_cpus:g} thread(s); U-Net channels {list(cfg.training.channels)}; crops "
          f"{'x'.join(map(str, cfg.sampler.patch_size))}, batch {cfg.training.batch_size}; {cfg.training.loss}, "
          f"{cfg.training.optimizer}; median of {args.steps - 5} steps per process")
    print("| malloc settings | step (s), per process | user / system CPU (s) | peak RSS (MiB) |")
    print("|---|---|---|---|")
    for name, env, in_thread in settings:
        runs = [_run(args.config, args.steps, env, in_thread) for _ in range(args.repeats)]
        steps = ", ".join(f"{r['step_s']:.3f}" for r in runs)
        cpu = " / ".join(f"{min(r[k] for r in runs):.1f}-{max(r[k] for r in runs):.1f}" for k in ("user_s", "system_s"))
        print(f"| {name} | {steps} | {cpu} | {max(r['peak_rss_mib'] for r in runs):.0f} |")


if __name__ == "__main__":
    main()
