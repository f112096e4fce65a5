"""GPU evidence in one command: the plan for the GPU found, the crop paths against MONAI's fast recipe
on that device, and time to the demo target with AMP on and off, with data wait and GPU busy share.

Usage (``make gpu-check`` runs it after the CUDA tests; with device "cpu" it is the suite's smoke test):

  .venv/bin/python benchmarks/gpu_pipeline.py --out runs/gpu_check/gpu_check.md
  .venv/bin/python benchmarks/gpu_pipeline.py --device cpu --quick          # the same code on the CPU

Sections of the one output file:

* plan: ``smartcache plan`` for the demo data on the probed machine (every value with its reason).
* crops/s to the device, same volumes, same cubic crops at ratio 1, batch 2, augmentation off:
  the host path (``CropBatchStream`` + pinned staging buffers), the GPU crop path (volumes uploaded
  once, crops cut on the device: ``DeviceCutter``), and MONAI's fast recipe (``CacheDataset`` with
  cached fg/bg indices, ``ThreadDataLoader(num_workers=0)``, then ``.to(device)``).
* training on the device with the demo config (``trainer/configs/demo_cpu.yaml``) in this process,
  AMP on and off: seconds to the demo target Dice, data wait share (time inside ``next()``), and GPU
  busy share (CUDA-event time of the steps over wall time; "n/a" on the CPU).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from monai.data import ThreadDataLoader, set_track_meta

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark modules
from datapath import build_monai_dataset, drain  # noqa: E402

from common.catalog import fingerprint, load_catalog  # noqa: E402
from common.config import ExperimentConfig, load_config  # noqa: E402
from common.demo_data import make_demo_data  # noqa: E402
from common.preprocess import Preprocessor, build_preprocessor  # noqa: E402
from common.volume import PreparedVolume  # noqa: E402
from trainer.commands import packaged_config  # noqa: E402
from trainer.ray_start import init_ray  # noqa: E402
from cache_service.sdk.stream import CropBatchStream  # noqa: E402
from cache_service.sdk.device import DeviceCutter, DeviceVolumes  # noqa: E402
from trainer.model import AmpPolicy, build_loss, build_model, build_optimizer  # noqa: E402
from trainer.plan_command import plan_run  # noqa: E402
from trainer.staging import DeviceStager, prefetch_to_device  # noqa: E402
from trainer.steps import train_step  # noqa: E402
from trainer.validation import Validator  # noqa: E402


def prepare(cfg: ExperimentConfig, data: Path) -> tuple[Preprocessor, list[PreparedVolume], list[PreparedVolume]]:
    """The cache's chain over every case, in this process (train and validation volumes)."""
    catalog = load_catalog(data, cfg.data)
    prep = build_preprocessor(catalog, cfg.preprocessing, cfg.sampler.patch_size, cfg.cache.stats_path(),
                              fingerprint(catalog, cfg.preprocessing))
    return prep, [prep(r) for r in catalog.train], [prep(r) for r in catalog.val]


def _stream(cfg: ExperimentConfig, volumes: list[PreparedVolume], epoch: int, cutter: Any = None,
            steps: int | None = None) -> CropBatchStream:
    return CropBatchStream(volumes, lambda v: v, cfg.sampler.initial_ratio, cfg.sampler, cfg.augmentation,
                           cfg.training.batch_size, seed=cfg.training.seed, epoch=epoch, steps=steps,
                           keep_fetched=True, cutter=cutter)


def _cutter(cfg: ExperimentConfig, device: torch.device) -> DeviceCutter:
    return DeviceCutter(DeviceVolumes(device, int(cfg.sampler.gpu_cache_bytes)), cfg.sampler.patch_size,
                        cfg.augmentation)


def _synced(batches: Iterable[dict], device: torch.device) -> Iterator[dict]:
    """Batches on ``device``, each waited for, so crops/s counts crops that really arrived."""
    for batch in batches:
        moved = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        yield moved


def crop_rows(cfg: ExperimentConfig, prep: Preprocessor, volumes: list[PreparedVolume], device: torch.device,
              seconds: float, data: Path) -> list[tuple[str, float]]:
    """crops/s of the host path, the device path and MONAI's fast recipe, all delivered to ``device``."""
    steps = 1_000_000  # cycled until the time is up
    with _stream(cfg, volumes, 0, steps=steps) as host:
        host_rate = drain(_synced(prefetch_to_device(host, DeviceStager(device)), device), seconds)["crops_per_s"]
    with _stream(cfg, volumes, 0, cutter=_cutter(cfg, device), steps=steps) as dev:
        dev_rate = drain(_synced(dev, device), seconds)["crops_per_s"]
    # last: the recipe (build_monai_dataset "fast") switches MONAI's meta tracking off process-wide
    catalog = load_catalog(data, cfg.data)
    records = [{"image": r.image, "label": r.label} for r in catalog.train]
    ds, _ = build_monai_dataset("fast", records, list(prep.chain.transforms), int(cfg.sampler.patch_size[0]), 1, 0)
    loader = ThreadDataLoader(ds, batch_size=cfg.training.batch_size, shuffle=True, num_workers=0)
    try:
        monai_rate = drain(_synced((b for _ in range(steps) for b in loader), device), seconds)["crops_per_s"]
    finally:  # back on: the rest of this process (the smoke test's pytest, say) reads MONAI metadata again
        set_track_meta(True)
    return [("host path (CropBatchStream + staging)", host_rate), ("GPU crop path (DeviceCutter)", dev_rate),
            ("MONAI fast recipe (CacheDataset + ThreadDataLoader)", monai_rate)]


def train_to_target(cfg: ExperimentConfig, volumes: list[PreparedVolume], val: list[PreparedVolume],
                    device: torch.device, limit_s: float) -> dict[str, Any]:
    """Train in this process until the target Dice or ``limit_s``; time, data wait and GPU busy share."""
    torch.manual_seed(cfg.training.seed)
    model = build_model(cfg.training, volumes[0].image.shape[0], volumes[0].num_classes).to(device)
    loss_fn, optimizer = build_loss(cfg.training.loss), build_optimizer(cfg.training, model.parameters())
    amp = AmpPolicy.for_device(device, cfg.training)
    scaler = amp.scaler()
    validator = Validator(cfg, volumes[0].num_classes, volumes[0].image.shape[0], devices=[device])
    cutter = _cutter(cfg, device) if cfg.sampler.device == "cuda" else None
    events: list[tuple[Any, Any]] = []
    start, wait, reached, epoch = time.perf_counter(), 0.0, None, 0
    best: float | None = None
    while time.perf_counter() - start < limit_s and reached is None:
        epoch += 1
        with _stream(cfg, volumes, epoch, cutter=cutter) as stream:
            batches = iter(stream if cutter else prefetch_to_device(stream, DeviceStager(device)))
            while True:
                t0 = time.perf_counter()
                batch = next(batches, None)
                wait += time.perf_counter() - t0
                if batch is None:
                    break
                pair = _step(model, batch, loss_fn, optimizer, amp, scaler, device)
                if pair is not None:
                    events.append(pair)
        if epoch % cfg.validation.interval == 0:
            best = max(best or 0.0, validator.validate(epoch, model.state_dict(), val).mean_dice)
            if best >= cfg.training.target_dice:
                reached = time.perf_counter() - start
    wall = time.perf_counter() - start
    return {"time_to_target_s": reached, "best_dice": best, "epochs": epoch, "wall_s": wall,
            "data_wait": wait / wall, "gpu_busy": _gpu_seconds(events) / wall if device.type == "cuda" else None}


def _step(model: torch.nn.Module, batch: dict, loss_fn: torch.nn.Module, optimizer: torch.optim.Optimizer,
          amp: AmpPolicy, scaler: torch.amp.GradScaler, device: torch.device) -> tuple[Any, Any] | None:
    """One training step; on CUDA a pair of events around it, read after the run (no per-step host sync)."""
    if device.type != "cuda":
        train_step(model, batch, loss_fn, optimizer, amp, scaler, device)
        return None
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    train_step(model, batch, loss_fn, optimizer, amp, scaler, device)
    end.record()
    return begin, end


def _gpu_seconds(events: list[tuple[Any, Any]]) -> float:
    if events:
        events[-1][1].synchronize()
    return sum(b.elapsed_time(e) for b, e in events) / 1000.0


def demo_config(device: torch.device, data: Path, patch: int, overrides: list[str]) -> ExperimentConfig:
    """The demo's own config on ``device``: augmentation off for the crop rows' like-for-like comparison."""
    cuda = device.type == "cuda"
    return load_config(packaged_config("demo_cpu.yaml"), [
        f"data.dataset_dir={data}", f"training.use_gpu={str(cuda).lower()}",
        f"sampler.device={'cuda' if cuda else 'cpu'}", f"sampler.patch_size=[{patch},{patch},{patch}]",
        f"cache.stats_dir={data.parent / 'stats'}", *overrides])


def render(plan_table: str, crops: list[tuple[str, float]], runs: dict[str, dict[str, Any]], device: torch.device,
           cfg: ExperimentConfig, elapsed: float, quick: bool) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    monai = crops[-1][1]
    lines = [f"# gpu_pipeline on {name}", "", f"load average before: {os.getloadavg()[0]:.1f}; total {elapsed:.0f} s",
             *(["", "**--quick smoke run: tiny volumes and 1 s rows; the numbers show the code runs, not its speed**"]
               if quick else []),
             "", "## plan", "", "```", plan_table, "```", "",
             f"## crops/s to {device.type}, {'x'.join(map(str, cfg.sampler.patch_size))} crops, batch "
             f"{cfg.training.batch_size}", "", "| path | crops/s | vs MONAI fast |", "| --- | ---: | ---: |"]
    lines += [f"| {row} | {rate:.1f} | {rate / monai:.2f}x |" if monai > 0 else f"| {row} | {rate:.1f} | - |"
              for row, rate in crops]
    lines += ["", f"## demo to target Dice {cfg.training.target_dice} on {device.type}", "",
              "| AMP | time to target (s) | best Dice | epochs | data wait | GPU busy |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for amp, r in runs.items():
        ttt = "not reached" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.0f}"
        busy = "n/a" if r["gpu_busy"] is None else f"{r['gpu_busy']:.0%}"
        dice = "no validation yet" if r["best_dice"] is None else f"{r['best_dice']:.3f}"
        lines.append(f"| {amp} | {ttt} | {dice} | {r['epochs']} | {r['data_wait']:.1%} | {busy} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (cuda when present), cuda or cpu")
    ap.add_argument("--data", type=Path, default=None, help="demo data folder (default: make 10 phantoms)")
    ap.add_argument("--out", type=Path, default=Path("runs/gpu_check/gpu_check.md"), help="the one output file")
    ap.add_argument("--patch", type=int, default=32, help="cubic crop edge for the crop rows and training")
    ap.add_argument("--seconds", type=float, default=15.0, help="seconds measured per crop row")
    ap.add_argument("--train-seconds", type=float, default=120.0, help="time limit per AMP setting")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 4 small cases, 16^3 crops, 1 s rows, 5 s training")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    work = Path(tempfile.mkdtemp(prefix="gpu-pipeline-"))
    data = args.data or make_demo_data(work / "data", cases=4 if args.quick else 10, size=32 if args.quick else 64)
    seconds, limit, patch = (1.0, 5.0, 16) if args.quick else (args.seconds, args.train_seconds, args.patch)
    init_ray(None, None)
    cfg = demo_config(device, data, patch, args.overrides)
    plan = plan_run(str(data), [f"cache.stats_dir={cfg.cache.stats_path()}"])
    prep, volumes, val = prepare(cfg, data)
    plain = cfg.replace(augmentation=cfg.augmentation.replace(flip_prob=0.0, shift_prob=0.0))
    crops = crop_rows(plain, prep, volumes, device, seconds, data)
    runs = {amp: train_to_target(cfg.replace(training=cfg.training.replace(amp=amp == "on")), volumes, val, device,
                                 limit)
            for amp in ("on", "off")}
    text = render(plan.table(), crops, runs, device, cfg, time.perf_counter() - start, args.quick)
    shutil.rmtree(work, ignore_errors=True)  # the phantoms made here (a --data folder is the user's)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
