"""Your own MONAI transform chain on the shared SmartCache, through a DataLoader.

    smartcache make-demo-data /tmp/demo --cases 8 --size 64
    python examples/monai_loop.py --data /tmp/demo

The Compose below is split at its first random transform. The cache runs the prefix
(LoadImaged ... ScaleIntensityRanged) once per volume and shares the result with every
experiment using the same prefix; its transforms and arguments are part of the cache's
fingerprint. ``RandCropByPosNegLabeld`` is replaced by the service's crop (same patch
size, samples per volume and pos/neg as the starting ratio, which validation then
adapts); RandFlipd and RandScaleIntensityd run here, on each crop.
"""

from __future__ import annotations

import torch
from monai.data import ThreadDataLoader
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandScaleIntensityd,
    ScaleIntensityRanged,
    Spacingd,
)

from _shared import dice_loss, parse_args, segment, small_unet, train_step
from cache_service import SmartCache

KEYS = ["image", "label"]


def my_transforms(patch: int) -> Compose:
    return Compose([
        LoadImaged(keys=KEYS),
        EnsureChannelFirstd(keys=KEYS),
        Orientationd(keys=KEYS, axcodes="RAS"),
        Spacingd(keys=KEYS, pixdim=(1.5, 1.5, 1.5), mode=("bilinear", "nearest")),
        ScaleIntensityRanged(keys="image", a_min=-200.0, a_max=300.0, b_min=0.0, b_max=1.0, clip=True),
        RandCropByPosNegLabeld(keys=KEYS, label_key="label", spatial_size=(patch,) * 3, pos=1, neg=1, num_samples=2),
        RandFlipd(keys=KEYS, prob=0.5, spatial_axis=0),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
    ])


def main() -> int:
    args = parse_args(__doc__.splitlines()[0])
    cache = SmartCache.connect(args.data, transforms=my_transforms(args.patch), cache_num=args.cache_num,
                               replace_rate=0.5, val_fraction=0.25, address=args.address, namespace=args.namespace)
    print(f"cache {cache.fingerprint}: prefix {[type(t).__name__ for t in cache.chain.prefix.transforms]}")
    model = small_unet(1, cache.catalog.num_classes)
    optimizer, loss_fn = torch.optim.Adam(model.parameters(), lr=1e-3), dice_loss()
    with cache.experiment("monai-loop", batch_size=2, steps=args.steps) as exp:
        dataset = exp.dataset()  # MONAI-form items: a list of num_samples crops each
        loader = ThreadDataLoader(dataset, batch_size=2)  # as MONAI counts: 2 volumes x num_samples crops a step
        volumes = exp.validation_volumes()
        for epoch in range(args.epochs):
            dataset.set_epoch(epoch)
            losses = [train_step(model, optimizer, loss_fn, b) for b in loader]
            exp.finish_epoch(epoch, {"loss": sum(losses) / len(losses)})
            preds = segment(model, [v.image for v in volumes], args.patch)
            report = exp.report_validation(epoch, preds, [v.label[0] for v in volumes])
            print(f"epoch {epoch}: loss {sum(losses) / len(losses):.3f}  Dice {report.mean_dice:.3f}  "
                  f"next ratio {report.ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
