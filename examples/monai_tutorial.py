"""MONAI's fast-training tutorial (acceleration/fast_training_tutorial.ipynb) on the shared SmartCache.

    smartcache make-demo-data /tmp/demo --cases 8 --size 64
    python examples/monai_tutorial.py --data /tmp/demo --patch 16

``train_transforms`` is the tutorial's chain with two changes: ``device`` is the CPU unless
CUDA is there, and ``spatial_size`` comes from ``--patch`` (the tutorial has 96, more than the
small demo volumes hold after its spacing). The loader is the tutorial's ``ThreadDataLoader(batch_size=4)``
without ``shuffle=True`` (the items come from a stream, which torch refuses to shuffle; the
service shuffles crops itself). As in MONAI, a step has batch_size x num_samples = 16 crops.
Validation is the tutorial's: sliding-window inference, ``AsDiscrete(argmax=True,
to_onehot=C)`` on the prediction and ``to_onehot=C`` on the label, then ``report_validation``
takes the one-hot tensors as they are.
"""

from __future__ import annotations

import torch
from monai.data import ThreadDataLoader
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.transforms import (
    AsDiscrete,
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    FgBgToIndicesd,
    LoadImaged,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    Spacingd,
)

from _shared import parse_args, small_unet
from cache_service import SmartCache


def train_transforms(device: torch.device, patch: int) -> Compose:
    return Compose([
        LoadImaged(keys=["image", "label"]),
        EnsureChannelFirstd(keys=["image", "label"]),
        Orientationd(keys=["image", "label"], axcodes="RAS"),
        Spacingd(keys=["image", "label"], pixdim=(1.5, 1.5, 2.0), mode=("bilinear", "nearest")),
        ScaleIntensityRanged(keys=["image"], a_min=-57, a_max=164, b_min=0.0, b_max=1.0, clip=True),
        CropForegroundd(keys=["image", "label"], source_key="image"),
        FgBgToIndicesd(keys="label", fg_postfix="_fg", bg_postfix="_bg", image_key="image"),
        EnsureTyped(keys=["image", "label"], device=device, track_meta=False),
        RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=(patch,) * 3, pos=1, neg=1,
                               num_samples=4, fg_indices_key="label_fg", bg_indices_key="label_bg"),
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=0),
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=1),
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=2),
        RandRotate90d(keys=["image", "label"], prob=0.5, max_k=3),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
    ])


def main() -> int:
    args = parse_args(__doc__.splitlines()[0])
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    cache = SmartCache.connect(args.data, transforms=train_transforms(device, args.patch), cache_num=args.cache_num,
                               replace_rate=0.5, val_fraction=0.25, address=args.address, namespace=args.namespace)
    classes = cache.catalog.num_classes
    model = small_unet(1, classes).to(device)
    loss_function, optimizer = DiceCELoss(to_onehot_y=True, softmax=True), torch.optim.Adam(model.parameters(), 1e-3)
    post_pred, post_label = AsDiscrete(argmax=True, to_onehot=classes), AsDiscrete(to_onehot=classes)
    with cache.experiment("monai-tutorial", steps=args.steps) as exp:
        train_ds = exp.dataset()
        train_loader = ThreadDataLoader(train_ds, num_workers=0, batch_size=4)
        volumes = exp.validation_volumes()
        for epoch in range(args.epochs):
            train_ds.set_epoch(epoch)
            losses = []
            for batch_data in train_loader:
                inputs, labels = batch_data["image"].to(device), batch_data["label"].to(device)
                optimizer.zero_grad()
                loss = loss_function(model(inputs), labels)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            exp.finish_epoch(epoch, {"loss": sum(losses) / len(losses)})
            model.eval()
            with torch.no_grad():
                outputs = [sliding_window_inference(torch.as_tensor(v.image)[None].to(device), (args.patch,) * 3, 4,
                                                    model)[0] for v in volumes]
            model.train()
            report = exp.report_validation(epoch, [post_pred(o).cpu() for o in outputs],
                                           [post_label(torch.as_tensor(v.label)) for v in volumes])
            print(f"epoch {epoch}: {len(losses)} steps of {inputs.shape[0]} crops, loss {sum(losses) / len(losses):.3f}"
                  f"  Dice {report.mean_dice:.3f}  next ratio {report.ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
