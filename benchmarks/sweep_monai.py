"""The sweep benchmark's MONAI arm: Ray Tune trials that each build their own fast-recipe CacheDataset.

This is what a MONAI user runs today to search hyperparameters: a function trainable per trial
that caches its own copy of the training volumes (benchmarks/monai_fast.py's recipe: cached
FgBg indices, ``copy_cache=False``, ``set_track_meta(False)``, ``ThreadDataLoader``) and
validates inline. Each step is the project's own :func:`trainer.steps.train_step` with the
trial's optimiser and lr, so the arms differ in the data path only. The trial asks Tune for the
CPUs a shared-cache trial asks for in all (its process, its trainer and its validator), so the
same number of trials runs at once in every arm.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psutil
import torch
from monai.data import CacheDataset, ThreadDataLoader, set_track_meta
from ray import tune

from common.catalog import Catalog
from common.preprocess import Preprocessor
from monai_fast import fast_transforms
from sweep_arms import MONAI, ArmRun, NodeSampler, TrialRow
from trainer.model import AmpPolicy, build_loss, build_model, build_optimizer
from trainer.steps import seed_everything, train_step
from trainer.sweep_plan import SweepPlan, TrialPlan
from trainer.validation import Validator

FILL_THREADS = 2  # monai_fast.py's CacheDataset num_workers


def _due(epoch: int, epochs: int, every: int) -> bool:
    """The shared-cache trials' schedule: epoch 0, every ``every`` epochs after it, and the last."""
    return epoch % every == 0 or epoch == epochs - 1


def _build(trial: TrialPlan, catalog: Catalog, prep: Preprocessor) -> tuple[CacheDataset, list, float]:
    """The trial's own CacheDataset and validation volumes; the process CPU seconds they took."""
    cfg = trial.config
    cpu0 = time.process_time()
    transform = fast_transforms(cfg, prep)
    transform.set_random_state(seed=cfg.training.seed)
    files = [{"image": r.image, "label": r.label} for r in catalog.train]
    ds = CacheDataset(files, transform=transform, cache_rate=1.0, num_workers=FILL_THREADS, copy_cache=False,
                      progress=False)
    val_volumes = [prep(r) for r in catalog.val]  # before set_track_meta(False): the chain needs the meta
    return ds, val_volumes, time.process_time() - cpu0


def monai_trial(config: dict[str, Any], plan: SweepPlan, catalog: Catalog, prep: Preprocessor, t0: float,
                out_dir: str) -> None:
    """One Tune trial: build the cache, train ``epochs x steps_per_epoch`` steps, report Dice per validation."""
    trial = plan.trial(int(config["trial"]))
    cfg, t = trial.config, trial.config.training
    torch.set_num_threads(max(1, int(t.worker_num_cpus)))  # the trainer's share, as Ray gives arm shared's
    seed_everything(t.seed, t.deterministic)
    ds, val_volumes, build_cpu = _build(trial, catalog, prep)
    set_track_meta(False)  # process-wide; this trial has its process to itself (reuse_actors=False)
    loader = ThreadDataLoader(ds, num_workers=0, batch_size=max(1, t.batch_size // cfg.sampler.samples_per_volume),
                              shuffle=True)
    device = torch.device("cpu")
    model = build_model(t, 1, catalog.num_classes)
    optimizer, loss_fn = build_optimizer(t, model.parameters()), build_loss(t.loss)
    amp = AmpPolicy.for_device(device, t)
    scaler, validator = amp.scaler(), Validator(cfg, catalog.num_classes, 1)
    first_at, steps, best, it = None, 0, 0.0, iter(loader)
    for epoch in range(t.epochs):
        model.train()
        for _ in range(t.steps_per_epoch or len(ds)):
            batch = next(it, None)
            if batch is None:  # a pass of the loader ended inside the epoch: start the next one
                it = iter(loader)
                batch = next(it)
            first_at = first_at or time.time()
            train_step(model, batch, loss_fn, optimizer, amp, scaler, device)
            steps += 1
        if _due(epoch, t.epochs, cfg.validation.interval):
            dice = validator.validate(epoch, model.state_dict(), val_volumes).mean_dice
            best = max(best, dice)
            record = {"first_step_s": None if first_at is None else first_at - t0, "best_dice": best,
                      "steps": steps, "build_cpu_s": build_cpu}
            Path(out_dir, f"trial{trial.index}.json").write_text(json.dumps(record))
            tune.report({"dice": dice, "best_dice": best, "epoch": epoch})


def run_monai_arm(plan: SweepPlan, catalog: Catalog, prep: Preprocessor, out: Path, concurrent: int) -> ArmRun:
    """Every trial of ``plan`` under Tune (FIFO, ``concurrent`` at once), each with its own CacheDataset."""
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t = plan.trials[0].config
    cpus = 0.1 + t.training.worker_num_cpus + t.validation.num_cpus  # a shared-cache trial's three processes
    with NodeSampler() as node:
        load0, t0 = psutil.getloadavg()[0], time.time()
        trainable = tune.with_resources(tune.with_parameters(monai_trial, plan=plan, catalog=catalog, prep=prep,
                                                             t0=t0, out_dir=str(out)), {"cpu": cpus})
        tuner = tune.Tuner(trainable, param_space={"trial": tune.grid_search([p.index for p in plan.trials])},
                           tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, reuse_actors=False),
                           run_config=tune.RunConfig(name=f"{plan.name}-monai", storage_path=str(out / "tune"),
                                                     verbose=1))
        grid = tuner.fit()
        wall = time.time() - t0
    rows, prep_cpu = [], 0.0
    for p in plan.trials:
        path = out / f"trial{p.index}.json"
        rec = json.loads(path.read_text()) if path.is_file() else {}
        prep_cpu += rec.get("build_cpu_s", 0.0)
        rows.append(TrialRow(p.index, p.values, rec.get("first_step_s"), rec.get("best_dice"), rec.get("steps", 0)))
    errors = [str(r.error) for r in grid if r.error is not None]
    if errors:
        print(f"monai arm: {len(errors)} trial(s) failed: {errors[0].splitlines()[-1]}", flush=True)
    return ArmRun(MONAI, wall, rows, prep_cpu, node.peak, node.idle, node.store_peak,
                  (load0, psutil.getloadavg()[0]))
