"""A training step and a sliding-window validation on the CPU in fp32 against bf16 autocast, for a config.

``training.cpu_bf16`` runs the forward passes under ``torch.autocast("cpu", torch.bfloat16)``
(the loss stays fp32). On a CPU with bf16 instructions (avx512_bf16, AMX, Arm bf16) oneDNN
computes the convolutions in bf16; without them it converts and computes in fp32, slower
than fp32 alone. This times the project's own step (``trainer.steps.train_step``) and its
own validation pass (``trainer.validation.predict_volume``) both ways, taking turns over a few
rounds (step times on a shared or virtual machine drift by a third from minute to minute), with the threads the
config gives a trainer and the validation, and says how many voxels' predicted classes the two
passes agree on (an untrained network: a check that bf16 does not scramble the output, not an
accuracy figure; the time-to-Dice tables measure that):

  python benchmarks/cpu_bf16.py --config trainer/configs/ct_cpu.yaml --volume 194 194 138

To see what a CPU without bf16 instructions would do on one that has them, cap oneDNN's
instruction set: ``ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/cpu_bf16.py ...`` (the regime line
then names the cap).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

from common.config import ExperimentConfig, load_config
from common.cpu_features import native_bf16
from trainer.model import AmpPolicy, build_loss, build_model, build_optimizer
from trainer.steps import train_step
from trainer.validation import predict_volume

CPU = torch.device("cpu")


def _with_bf16(cfg: ExperimentConfig, on: bool) -> ExperimentConfig:
    return cfg.replace(training=cfg.training.replace(amp=True, cpu_bf16=on))


def step_times(cfg: ExperimentConfig, classes: int, steps: int) -> list[float]:
    """Seconds of each of ``steps`` training steps of the project's own step on random crops (after two
    warm-up steps)."""
    torch.manual_seed(0)
    t = cfg.training
    model = build_model(t, 1, classes).train()
    optimizer, loss_fn = build_optimizer(t, model.parameters()), build_loss(t.loss)
    amp = AmpPolicy.for_device(CPU, t)
    scaler = amp.scaler()
    shape = (t.batch_size, 1, *cfg.sampler.patch_size)
    batch = {"image": torch.randn(shape), "label": torch.randint(0, classes, shape)}
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        train_step(model, batch, loss_fn, optimizer, amp, scaler, CPU)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return times


def validation_pass(cfg: ExperimentConfig, classes: int, image: np.ndarray) -> tuple[float, np.ndarray]:
    """Seconds of one validation pass over one volume and its class map."""
    torch.manual_seed(0)
    model = build_model(cfg.training, 1, classes)
    t0 = time.perf_counter()
    pred = predict_volume(model, image, cfg, classes, CPU)
    return time.perf_counter() - t0, pred


def measure(cfg: ExperimentConfig, classes: int, image: np.ndarray, steps: int, rounds: int,
            threads: tuple[int, int]) -> tuple[dict[bool, float], dict[bool, float], dict[bool, np.ndarray]]:
    """Median step and validation seconds per setting (False: fp32, True: bf16), the two settings taking
    turns over ``rounds`` rounds (after a warm-up pass of each), so a slow spell of the machine falls
    on both; and each setting's class map."""
    steps_s: dict[bool, list[float]] = {False: [], True: []}
    val_s: dict[bool, list[float]] = {False: [], True: []}
    preds: dict[bool, np.ndarray] = {}
    for r in range(rounds + 1):
        for on in (False, True):
            c = _with_bf16(cfg, on)
            torch.set_num_threads(threads[0])
            times = step_times(c, classes, steps)
            torch.set_num_threads(threads[1])
            seconds, preds[on] = validation_pass(c, classes, image)
            if r:  # round 0 warms up oneDNN's kernels for both settings
                steps_s[on] += times
                val_s[on].append(seconds)
    return ({on: statistics.median(v) for on, v in steps_s.items()},
            {on: statistics.median(v) for on, v in val_s.items()}, preds)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="experiment YAML (network, crops, batch, validation window)")
    ap.add_argument("--volume", type=int, nargs=3, required=True, metavar=("X", "Y", "Z"),
                    help="a validation volume's shape after preprocessing")
    ap.add_argument("--steps", type=int, default=6, help="training steps timed per setting and round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, each timing fp32 then bf16 (medians over all)")
    ap.add_argument("--classes", type=int, default=3, help="output channels of the network")
    args = ap.parse_args(argv)

    cfg = load_config(args.config, [])
    image = np.random.default_rng(0).normal(size=(1, *args.volume)).astype(np.float32)
    threads = (max(1, int(cfg.training.worker_num_cpus)), max(1, int(cfg.validation.num_cpus)))
    step, val, preds = measure(cfg, args.classes, image, args.steps, args.rounds, threads)
    train_threads, val_threads = threads
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    print(f"regime: CPU {platform.processor() or platform.machine()}, bf16 instructions: {native_bf16()}"
          f"{f' (oneDNN capped at {cap})' if cap else ''}; "
          f"U-Net channels {list(cfg.training.channels)}, crops {list(cfg.sampler.patch_size)} x batch "
          f"{cfg.training.batch_size} on {train_threads} thread(s); validation of a {args.volume} volume, window "
          f"{list(cfg.validation.roi_size)}, {cfg.validation.sw_batch_size} per pass, on {val_threads} thread(s)")
    print(f"{args.rounds} rounds, fp32 and bf16 taking turns; medians of {args.steps * args.rounds} steps and "
          f"{args.rounds} validation passes each")
    print("| autocast | training step (s, median) | validation pass (s, median) | step speed-up | validation speed-up |")
    print("|---|---:|---:|---:|---:|")
    for on in (False, True):
        print(f"| {'bf16' if on else 'none (fp32)'} | {step[on]:.3f} | {val[on]:.2f} | {step[False] / step[on]:.2f}x | "
              f"{val[False] / val[on]:.2f}x |")
    agree = float((preds[False] == preds[True]).mean())
    print(f"voxels whose predicted class agrees between fp32 and bf16 (untrained network): {agree:.2%}")


if __name__ == "__main__":
    main()
