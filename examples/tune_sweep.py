"""Your own Ray Tune trainable on the shared SmartCache: every trial trains on the same cached copy.

    smartcache make-demo-data /tmp/demo --cases 8 --size 64
    python examples/tune_sweep.py --data /tmp/demo

The driver connects to (or starts) the cache once; Tune runs the trials, each of which opens
its experiment with ``trial_experiment`` (tagged with its sweep and trial, so the status API's
``/sweeps`` lists it), trains a small U-Net on crops of the shared pool and reports Dice to
Tune after each validation. ASHA stops the trials that lag; leaving the ``with`` block, also
when Tune stops a trial, detaches its experiment from the cache.
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from _shared import dice_loss, parse_args, segment, small_unet, train_step
from cache_service import SmartCache
from cache_service.sdk.tune import trial_experiment


def trainable(config: dict[str, Any], cache: SmartCache, patch: int, steps: int, epochs: int) -> None:
    """One trial: the same loop as plain_pytorch.py, with the trial's learning rate."""
    model = small_unet(1, cache.catalog.num_classes)
    optimizer, loss_fn = torch.optim.Adam(model.parameters(), lr=config["lr"]), dice_loss()
    with trial_experiment(cache, patch_size=(patch,) * 3, batch_size=2, steps=steps) as exp:
        volumes = exp.validation_volumes()
        for epoch in range(epochs):
            with exp.batches(epoch) as batches:
                losses = [train_step(model, optimizer, loss_fn, b) for b in batches]
            exp.finish_epoch(epoch, {"loss": sum(losses) / len(losses)})
            preds = segment(model, [v.image for v in volumes], patch)
            report = exp.report_validation(epoch, preds, [v.label[0] for v in volumes])
            tune.report({"dice": report.mean_dice, "epoch": epoch, "ratio": report.ratio})


def main() -> int:
    args = parse_args(__doc__.splitlines()[0])
    cache = SmartCache.connect(args.data, cache_num=args.cache_num, replace_rate=0.5, val_fraction=0.25,
                               address=args.address, namespace=args.namespace,
                               settings={"preprocessing": {"spacing": [1.5, 1.5, 1.5]}})
    print(f"cache {cache.fingerprint}: {cache.status().items_cached} volumes in the pool, shared by every trial")
    run = tune.with_parameters(trainable, cache=cache, patch=args.patch, steps=args.steps, epochs=args.epochs)
    tuner = tune.Tuner(
        tune.with_resources(run, {"cpu": 0.5}),  # two trials at once fit on 2 cores beside the cache
        param_space={"lr": tune.grid_search([3e-3, 1e-3, 1e-6])},
        tune_config=tune.TuneConfig(metric="dice", mode="max", max_concurrent_trials=2, reuse_actors=False,
                                    scheduler=ASHAScheduler(max_t=args.epochs, grace_period=1, reduction_factor=2)),
        run_config=tune.RunConfig(name="tune-sweep-example", storage_path=tempfile.mkdtemp(prefix="tune-"), verbose=0),
    )
    results = tuner.fit()
    for r in results:
        print(f"lr {r.config['lr']:g}: Dice {r.metrics['dice']:.3f} after epoch {r.metrics['epoch']}")
    best = results.get_best_result()
    print(f"best lr {best.config['lr']:g}: Dice {best.metrics['dice']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
