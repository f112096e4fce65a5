"""A plain PyTorch training loop on crops from the shared SmartCache.

    smartcache make-demo-data /tmp/demo --cases 8 --size 64
    python examples/plain_pytorch.py --data /tmp/demo

The cache runs the project's own deterministic preprocessing (orientation, spacing,
intensity normalisation) once per volume; every epoch this loop iterates pos/neg crops of
the current pool, and after each validation the adaptive ratio moves (paper Eq. 4-6).
"""

from __future__ import annotations

import torch

from _shared import dice_loss, parse_args, segment, small_unet, train_step
from cache_service import SmartCache


def main() -> int:
    args = parse_args(__doc__.splitlines()[0])
    cache = SmartCache.connect(args.data, cache_num=args.cache_num, replace_rate=0.5, val_fraction=0.25,
                               address=args.address, namespace=args.namespace,
                               settings={"preprocessing": {"spacing": [1.5, 1.5, 1.5]}})
    print(f"cache {cache.fingerprint}: {cache.status().items_cached} volumes in the pool")
    model = small_unet(1, cache.catalog.num_classes)
    optimizer, loss_fn = torch.optim.Adam(model.parameters(), lr=1e-3), dice_loss()
    with cache.experiment("plain-pytorch", patch_size=(args.patch,) * 3, batch_size=2, steps=args.steps) as exp:
        volumes = exp.validation_volumes()
        for epoch in range(args.epochs):
            with exp.batches(epoch) as batches:  # rank 0 of 1; pass rank=, world_size= under DDP
                losses = [train_step(model, optimizer, loss_fn, b) for b in batches]
            rotated = exp.finish_epoch(epoch, {"loss": sum(losses) / len(losses)})
            preds = segment(model, [v.image for v in volumes], args.patch)
            report = exp.report_validation(epoch, preds, [v.label[0] for v in volumes])
            print(f"epoch {epoch}: loss {sum(losses) / len(losses):.3f}  Dice {report.mean_dice:.3f}  "
                  f"r_FP {report.r_fp:.3f}  r_FN {report.r_fn:.3f}  next ratio {report.ratio:.2f}  "
                  f"generation {batches.generation}{' (rotated)' if rotated else ''}")
        status = exp.status()
        print(f"cycle coverage {status.cycle_coverage:.0%}, cycles completed {status.cycles_completed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
