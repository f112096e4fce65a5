"""Network, loss, optimiser and AMP settings, built from the config with MONAI parts.

Kept apart from the training loop so the validation actor and ``smartcache predict``
build exactly the same network from the same config.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Iterator

import torch
from monai.losses import DiceCELoss, DiceLoss
from monai.networks.nets import UNet
from monai.optimizers import Novograd

from common.config import TrainingConfig
from common.cpu_features import native_bf16


def build_model(cfg: TrainingConfig, in_channels: int, num_classes: int) -> torch.nn.Module:
    """MONAI 3D U-Net with instance norm (the paper's network family)."""
    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=num_classes, channels=cfg.channels,
                strides=cfg.strides, num_res_units=cfg.num_res_units, norm="INSTANCE")


def build_loss(name: str = "dice") -> torch.nn.Module:
    """Soft Dice with the squared denominator of the paper's Eq. 1, on softmax outputs.

    Sums run over the whole batch (``batch=True``): a crop without any lesion then does not
    score a near-1 loss on its own, and background is kept in so that false positives far
    from any organ are paid for directly rather than only through the softmax.
    ``"dice_ce"`` adds voxel-wise cross-entropy (MONAI's ``DiceCELoss``, as in MONAI's
    fast-training recipe): its gradient reaches every voxel of a small class directly,
    where the Dice gradient of a class is shared out over the whole batch.
    """
    kwargs = dict(to_onehot_y=True, softmax=True, squared_pred=True, include_background=True, batch=True)
    return DiceCELoss(**kwargs) if name == "dice_ce" else DiceLoss(**kwargs)


def build_optimizer(cfg: TrainingConfig, params: Iterator[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "novograd":
        return Novograd(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)


@dataclass(frozen=True)
class AmpPolicy:
    """Which autocast applies: fp16 + GradScaler on CUDA, bf16 on CPU only when asked."""

    device_type: str
    dtype: torch.dtype | None

    @classmethod
    def for_device(cls, device: torch.device, cfg: TrainingConfig) -> "AmpPolicy":
        if not cfg.amp:
            return cls(device.type, None)
        if device.type == "cuda":
            return cls("cuda", torch.float16)
        return cls(device.type, torch.bfloat16 if cfg.cpu_bf16 else None)

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @property
    def uses_scaler(self) -> bool:
        return self.dtype == torch.float16

    def warn_if_emulated(self) -> None:
        """bf16 asked for on a CPU without bf16 instructions runs slower than fp32: say so, and how to fix it."""
        if self.device_type == "cpu" and self.dtype == torch.bfloat16 and native_bf16() is False:
            warnings.warn("training.cpu_bf16 is true, but this CPU has no bf16 instructions (avx512_bf16, AMX or "
                          "Arm bf16): autocast will be about ten times slower than fp32; set training.cpu_bf16: false",
                          stacklevel=2)

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.uses_scaler)
