"""Sliding-window validation and the adaptive ratio it publishes (paper Eq. 4-6).

``Validator`` is a plain class: the launcher wraps it in ``ray.remote`` so it runs beside
the trainers, and the tests drive it directly. It keeps its own copy of the network,
loads the weights each epoch hands it, segments every cached validation volume and turns
the errors into the next positive:negative ratio for the trainers. The scoring (Dice,
r_FP, r_FN, the next ratio) is :mod:`common.scoring`, the same an SDK user's
``Experiment.report_validation`` runs, so both publish the same numbers for one prediction.

Given several devices (the GPUs of a validation actor with ``validation.num_gpus >= 2``) it
keeps one replica per device and splits the volumes across them, one thread per device, as
the paper splits validation across GPUs; the result does not depend on the split.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.transforms import KeepLargestConnectedComponent

from common.config import ExperimentConfig
from common.scoring import CaseScore, ValidationResult, score, summarise
from common.volume import PreparedVolume
from trainer.model import AmpPolicy, build_model


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
        self.first_prediction: np.ndarray | None = None  # the first volume's class map in the latest validation

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        clean = {k.removeprefix("module."): v for k, v in state_dict.items()}
        for replica in self.replicas:
            replica.load_state_dict(clean)

    def _score(self, k: int, vol: PreparedVolume, keep: bool = False) -> CaseScore:
        """Dice per class and (r_FP, r_FN) of one volume on replica ``k`` (the scoring every consumer uses);
        ``keep``: also keep its class map as ``first_prediction`` (the run's picture, without a second pass)."""
        pred = predict_volume(self.replicas[k], vol.image, self.cfg, self.num_classes, self.devices[k])
        if keep:
            self.first_prediction = pred.astype(np.uint8) if self.num_classes <= 256 else pred
        return score(pred, vol.label, self.num_classes, self.cfg.sampler.formula)[0]

    def _score_all(self, volumes: Sequence[PreparedVolume]) -> list[CaseScore]:
        """Scores in volume order; volume i runs on replica i mod (number of devices)."""
        n = len(self.replicas)
        if n == 1:
            return [self._score(0, v, i == 0) for i, v in enumerate(volumes)]
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="validate") as pool:
            shards = [pool.submit(lambda k=k: [self._score(k, v, k == j == 0) for j, v in enumerate(volumes[k::n])])
                      for k in range(n)]
            results = [f.result() for f in shards]
        return [results[i % n][i // n] for i in range(len(volumes))]

    def validate(self, epoch: int, state_dict: dict[str, torch.Tensor],
                 volumes: Sequence[PreparedVolume]) -> ValidationResult:
        start = time.perf_counter()
        self.load_weights(state_dict)
        self.first_prediction = None  # never an earlier validation's, whatever the volumes
        scores = self._score_all(volumes)
        result = summarise(epoch, scores, self.num_classes, self.cfg.sampler, self.ratio,
                           case_ids=[v.item_id for v in volumes], seconds=time.perf_counter() - start)
        self.ratio = result.ratio
        self.history.append(result)
        if self.publish is not None:
            self.publish(result)
        return result
