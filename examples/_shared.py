"""Bits the three examples share: a small 3D U-Net, one training step, validation on the cached volumes.

Nothing here is specific to the cache; it is what any segmentation loop has anyway.
"""

from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceLoss
from monai.networks.nets import UNet


def parse_args(description: str, epochs: int = 4) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", required=True, help="MSD-layout folder (smartcache make-demo-data DIR)")
    p.add_argument("--address", default=None, help="Ray cluster to join ('auto', or host:port); default: start one")
    p.add_argument("--namespace", default="smartcache", help="Ray namespace of the cache actor")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--patch", type=int, default=32, help="cubic patch edge in voxels")
    p.add_argument("--steps", type=int, default=4, help="batches per epoch and rank")
    p.add_argument("--cache-num", type=int, default=4, help="volumes in the shared pool")
    return p.parse_args()


def small_unet(in_channels: int, num_classes: int) -> torch.nn.Module:
    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=num_classes, channels=(8, 16, 32),
                strides=(2, 2), num_res_units=1, norm="INSTANCE")


def dice_loss() -> torch.nn.Module:
    return DiceLoss(to_onehot_y=True, softmax=True, squared_pred=True, batch=True)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: torch.nn.Module,
               batch: dict[str, torch.Tensor]) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(batch["image"]), batch["label"].long())
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def segment(model: torch.nn.Module, images: Sequence[np.ndarray], roi: int) -> list[np.ndarray]:
    """Class maps (X, Y, Z) for whole prepared images (C, X, Y, Z), by sliding-window inference."""
    model.eval()
    out = []
    with torch.no_grad():
        for image in images:
            x = torch.from_numpy(np.array(image, dtype=np.float32))[None]
            logits = sliding_window_inference(x, (roi,) * 3, 2, model, overlap=0.25)
            out.append(logits.argmax(1)[0].numpy())
    model.train()
    return out
