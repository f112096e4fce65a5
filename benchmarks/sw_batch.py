"""Sliding-window validation cost against ``validation.sw_batch_size``, for a config's network and window.

Validation beside training (the validation actor, or a thread of an in-process run) costs
CPU that a 2-core node takes from the trainer, and MONAI's inline validation stops
training for as long as it runs. The knob that changes the cost and not the result is how
many windows go through the network per pass: the windows, their Gaussian weights and the
blended output are the same, only the batching differs (the script checks the outputs
agree). On CPU the per-window cost depends on the window and the network (oneDNN picks
different kernels per shape), so measure it for yours:

  python benchmarks/sw_batch.py --config trainer/configs/ct_cpu.yaml --volume 180 180 110

It prints, per ``sw_batch_size``, the seconds for one whole volume of that shape (zeros
are as costly as CT for a dense network), the seconds per window, and the speed-up over 1.
Threads: the validation actor's share (``validation.num_cpus``, at least one), as Ray gives it.
"""

from __future__ import annotations

import argparse
import time

import torch
from monai.inferers import sliding_window_inference

from common.config import load_config
from trainer.model import build_model


def _time(model: torch.nn.Module, x: torch.Tensor, roi: tuple[int, ...], overlap: float, sw: int,
          repeats: int) -> tuple[float, torch.Tensor, int]:
    """Best of ``repeats`` (after one warm-up pass), the output, and the windows one pass ran (counted as
    they reach the network, so the count is MONAI's own scan, not a copy of its arithmetic)."""
    best, out, windows = float("inf"), torch.empty(0), 0

    def counted(batch: torch.Tensor) -> torch.Tensor:
        nonlocal windows
        windows += batch.shape[0]
        return model(batch)

    with torch.inference_mode():
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            out = sliding_window_inference(x, roi_size=roi, sw_batch_size=sw, predictor=counted, overlap=overlap,
                                           mode="gaussian")
            if i:
                best = min(best, time.perf_counter() - t0)
    return best, out, windows // (repeats + 1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="experiment YAML (network, validation window and overlap)")
    ap.add_argument("--volume", type=int, nargs=3, required=True, metavar=("X", "Y", "Z"),
                    help="a validation volume's shape after preprocessing")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4], help="sw_batch_size values to time")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--classes", type=int, default=3, help="output channels of the network")
    args = ap.parse_args(argv)

    cfg = load_config(args.config, [])
    torch.set_num_threads(max(1, int(cfg.validation.num_cpus)))
    torch.manual_seed(0)
    model = build_model(cfg.training, 1, args.classes).eval()
    x = torch.zeros(1, 1, *args.volume)
    roi, overlap = tuple(cfg.validation.roi_size), float(cfg.validation.overlap)
    base, ref = None, None
    for sw in args.sizes:
        seconds, out, windows = _time(model, x, roi, overlap, sw, args.repeats)
        if ref is None:
            ref = out
            print(f"regime: CPU, {torch.get_num_threads()} thread(s); U-Net channels {list(cfg.training.channels)}; "
                  f"volume {args.volume}, window {list(roi)}, overlap {overlap}: {windows} windows")
            print("| sw_batch_size | seconds per volume | seconds per window | speed-up vs 1 |")
            print("|---:|---:|---:|---:|")
        elif not torch.allclose(out, ref, atol=1e-4):
            raise SystemExit(f"sw_batch_size {sw} gave a different output (max diff {(out - ref).abs().max():.2e})")
        base = base or seconds
        print(f"| {sw} | {seconds:.2f} | {seconds / windows:.3f} | {base / seconds:.2f}x |")

if __name__ == "__main__":
    main()
