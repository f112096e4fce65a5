"""A Ray Train ``TorchTrainer`` (DDP over gloo) whose workers read crops from the shared SmartCache.

    smartcache make-demo-data /tmp/demo --cases 8 --size 64
    python examples/ray_train_loop.py --data /tmp/demo

The driver opens the experiment and hands it to the workers in ``train_loop_config``
(it pickles; only the driver detaches it). Each worker wraps ``exp.dataset()`` in a
DataLoader: rank and world size come from the Ray Train context, so each rank crops its
own shard of the same epoch snapshot. Rank 0 reports the epoch and the validation.
"""

from __future__ import annotations

import tempfile
from typing import Any

import ray.train
import ray.train.torch
import torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from monai.data import list_data_collate
from torch.utils.data import DataLoader

from _shared import dice_loss, parse_args, segment, small_unet, train_step
from cache_service import SmartCache


def train_loop_per_worker(config: dict[str, Any]) -> None:
    exp, patch = config["experiment"], config["patch"]
    rank = ray.train.get_context().get_world_rank()
    model = ray.train.torch.prepare_model(small_unet(1, exp.num_classes))
    optimizer, loss_fn = torch.optim.Adam(model.parameters(), lr=1e-3), dice_loss()
    dataset = exp.dataset()  # rank / world size from the Ray Train context
    loader = DataLoader(dataset, batch_size=None, collate_fn=list_data_collate,  # one item: samples_per_volume crops
                        pin_memory=torch.cuda.is_available())
    volumes = exp.validation_volumes() if rank == 0 else []
    for epoch in range(config["epochs"]):
        dataset.set_epoch(epoch)
        losses = [train_step(model, optimizer, loss_fn, b) for b in loader]
        metrics = {"epoch": epoch, "loss": sum(losses) / len(losses)}
        exp.finish_epoch(epoch, metrics, rank=rank)  # only rank 0's call is sent
        if rank == 0:
            preds = segment(model.module if hasattr(model, "module") else model, [v.image for v in volumes], patch)
            report = exp.report_validation(epoch, preds, [v.label[0] for v in volumes])
            metrics.update(mean_dice=report.mean_dice, ratio=report.ratio)
        ray.train.report(metrics)


def main() -> int:
    args = parse_args(__doc__.splitlines()[0])
    cache = SmartCache.connect(args.data, cache_num=args.cache_num, replace_rate=0.5, val_fraction=0.25,
                               address=args.address, namespace=args.namespace,
                               settings={"preprocessing": {"spacing": [1.5, 1.5, 1.5]}})
    with cache.experiment("ray-train", patch_size=(args.patch,) * 3, batch_size=2, steps=args.steps) as exp, \
            tempfile.TemporaryDirectory() as storage:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"experiment": exp, "epochs": args.epochs, "patch": args.patch},
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
            run_config=RunConfig(name="smartcache-example", storage_path=storage))
        result = trainer.fit()
        status = exp.status()  # what the workers published, as the cache's registry holds it
        for r in status.sampler_history:
            print(f"epoch {r.epoch}: Dice {r.mean_dice:.3f}  r_FP {r.r_fp:.3f}  r_FN {r.r_fn:.3f}  "
                  f"next ratio {r.ratio:.2f}")
        print(f"epochs reported {status.epoch + 1}, cycle coverage {status.cycle_coverage:.0%}, "
              f"cycles completed {status.cycles_completed}")
    return 0 if result.error is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
