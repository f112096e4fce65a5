"""Sliding-window validation and the adaptive ratio it publishes (paper Eq. 4-6).

``Validator`` is a plain class: the launcher wraps it in ``ray.remote`` so it runs beside
the trainers, and the tests drive it directly. It keeps its own copy of the network,
loads the weights each epoch hands it, segments every cached validation volume and turns
the errors into the next positive:negative ratio for the trainers.

Given several devices (the GPUs of a validation actor with ``validation.num_gpus >= 2``) it
keeps one replica per device and splits the volumes across them, one thread per device, as
the paper splits validation across GPUs; the result does not depend on the split.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.metrics import compute_dice
from monai.networks.utils import one_hot
from monai.transforms import KeepLargestConnectedComponent

from common.config import ExperimentConfig
from common.ratio import error_indices, next_ratio
from common.volume import PreparedVolume
from trainer.model import AmpPolicy, build_model


@dataclass(frozen=True)
class ValidationResult:
    """One validation round: Dice per foreground class, error indices and the next ratio."""

    epoch: int
    dice_per_class: tuple[float, ...]  # classes 1..K-1
    mean_dice: float
    r_fp: float
    r_fn: float
    ratio: float
    seconds: float
    case_dice: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def predict_volume(model: torch.nn.Module, image: np.ndarray, cfg: ExperimentConfig, num_classes: int,
                   device: torch.device) -> np.ndarray:
    """Class map (X, Y, Z) for one prepared image (C, X, Y, Z) by sliding-window inference."""
    amp = AmpPolicy.for_device(device, cfg.training)
    x = torch.from_numpy(np.array(image, dtype=np.float32, copy=True))[None].to(device)
    model.eval()
    with torch.no_grad(), amp.autocast():
        logits = sliding_window_inference(x, roi_size=cfg.validation.roi_size, sw_batch_size=cfg.validation.sw_batch_size,
                                          predictor=model, overlap=cfg.validation.overlap, mode="gaussian")
    pred = logits.float().argmax(dim=1)  # (1, X, Y, Z)
    if cfg.validation.keep_largest_component and num_classes > 1:
        klcc = KeepLargestConnectedComponent(applied_labels=list(range(1, num_classes)), independent=True)
        pred = klcc(pred)
    return np.asarray(torch.as_tensor(pred)[0].cpu().numpy(), dtype=np.int64)


def dice_per_class(pred: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice of each foreground class (1..K-1); a class absent from both maps scores 1."""
    p = one_hot(torch.as_tensor(pred)[None, None].long(), num_classes)
    y = one_hot(torch.as_tensor(label)[None, None].long(), num_classes)
    return compute_dice(p, y, include_background=False, ignore_empty=False)[0].cpu().numpy()


def visible_devices(use_gpu: bool) -> list[torch.device]:
    """Every CUDA device this process sees (Ray sets CUDA_VISIBLE_DEVICES to the actor's GPUs), else the CPU."""
    if use_gpu and torch.cuda.is_available():
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [torch.device("cpu")]


class Validator:
    """Evaluates weights on the cached validation volumes and computes the next ratio."""

    def __init__(self, cfg: ExperimentConfig, num_classes: int, in_channels: int,
                 publish: Callable[[ValidationResult], None] | None = None,
                 devices: Sequence[torch.device] | None = None) -> None:
        self.cfg, self.num_classes = cfg, num_classes
        self.devices = list(devices) if devices else visible_devices(cfg.training.use_gpu)
        self.device = self.devices[0]
        self.replicas = [build_model(cfg.training, in_channels, num_classes).to(d) for d in self.devices]
        self.model = self.replicas[0]
        self.publish = publish
        self.history: list[ValidationResult] = []
        self.ratio = cfg.sampler.initial_ratio

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        clean = {k.removeprefix("module."): v for k, v in state_dict.items()}
        for replica in self.replicas:
            replica.load_state_dict(clean)

    def _score(self, k: int, vol: PreparedVolume) -> tuple[np.ndarray, float, float]:
        """Dice per class and (r_FP, r_FN) of one volume on replica ``k``."""
        pred = predict_volume(self.replicas[k], vol.image, self.cfg, self.num_classes, self.devices[k])
        label = np.asarray(vol.label[0])
        d = dice_per_class(pred, label, self.num_classes)
        r_fp, r_fn = error_indices(pred, label, self.num_classes, self.cfg.sampler.formula)
        return d, r_fp, r_fn

    def _score_all(self, volumes: Sequence[PreparedVolume]) -> list[tuple[np.ndarray, float, float]]:
        """Scores in volume order; volume i runs on replica i mod (number of devices)."""
        n = len(self.replicas)
        if n == 1:
            return [self._score(0, v) for v in volumes]
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="validate") as pool:
            shards = [pool.submit(lambda k=k: [self._score(k, v) for v in volumes[k::n]]) for k in range(n)]
            results = [f.result() for f in shards]
        return [results[i % n][i // n] for i in range(len(volumes))]

    def validate(self, epoch: int, state_dict: dict[str, torch.Tensor],
                 volumes: Sequence[PreparedVolume]) -> ValidationResult:
        start = time.perf_counter()
        self.load_weights(state_dict)
        scores = self._score_all(volumes)
        dices = [d for d, _, _ in scores]
        fps = [r_fp for _, r_fp, _ in scores]
        fns = [r_fn for _, _, r_fn in scores]
        per_case = {vol.item_id: float(np.mean(d)) for vol, (d, _, _) in zip(volumes, scores)}
        per_class = np.mean(dices, axis=0) if dices else np.zeros(self.num_classes - 1)
        r_fp, r_fn = float(np.mean(fps)) if fps else 1.0, float(np.mean(fns)) if fns else 1.0
        if self.cfg.sampler.adaptive:
            self.ratio = next_ratio(r_fp, r_fn, self.cfg.sampler.gamma, self.cfg.sampler.ratio_bounds)
        result = ValidationResult(epoch, tuple(float(x) for x in per_class), float(np.mean(per_class)),
                                  r_fp, r_fn, float(self.ratio), time.perf_counter() - start, per_case)
        self.history.append(result)
        if self.publish is not None:
            self.publish(result)
        return result
