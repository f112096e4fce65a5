"""Apply a trained model to new scans and write label maps in each input's own space.

The image goes through the same deterministic chain as training (RAS, target spacing,
the same normalisation with the same dataset statistics, saved in the model file), the
sliding window segments it, and the class map is resampled back (nearest neighbour) onto
the input's original grid and affine, so it overlays the input in any viewer.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, SpatialResample

from common.atomic import atomic_write
from common.config import ExperimentConfig, config_from_dict
from common.errors import DataError, StorageError
from common.nifti import read_nifti
from common.preprocess import IntensityStats, normalization_steps, spatial_steps
from trainer.checkpoints import load_plain
from trainer.model import build_model
from trainer.validation import predict_volume

MODEL_FILE = "model.pt"


def save_model_file(path: Path, weights: dict[str, torch.Tensor], cfg: ExperimentConfig, num_classes: int,
                    in_channels: int, labels: tuple[str, ...], norm: str, stats: IntensityStats | None) -> None:
    """Everything ``predict`` needs to redo the training-time preprocessing exactly: tensors and plain data
    only (config and statistics as JSON text), so it loads with ``weights_only=True``; written atomically."""
    body = {"weights": weights, "config": json.dumps(cfg.to_dict()), "num_classes": num_classes,
            "in_channels": in_channels, "labels": list(labels), "normalization": norm,
            "stats": json.dumps(asdict(stats)) if stats is not None else None}
    try:
        atomic_write(path, lambda fh: torch.save(body, fh), "wb")
    except OSError as err:
        raise StorageError(str(path), f"could not write the model file ({err.strerror or err}); free space "
                                      "there or use another --out") from err


def _plain(value: str | dict | None) -> dict | None:
    """A JSON field of the model file; files written before it held JSON text have the dict itself."""
    return json.loads(value) if isinstance(value, str) else value


def _image_chain(cfg: ExperimentConfig, norm: str, stats: dict | None) -> Compose:
    """The training chain without the label: same orientation, spacing and normalisation."""
    intensity = IntensityStats(**stats) if stats is not None else None
    return Compose([*spatial_steps(cfg.preprocessing, ["image"], "bilinear"),
                    *normalization_steps(cfg.preprocessing, norm, intensity)])


class Predictor:
    """Loads a model file once and segments any number of NIfTI scans."""

    def __init__(self, model_file: str | Path, device: str = "cpu") -> None:
        path = Path(model_file)
        if path.is_dir():
            path = path / MODEL_FILE
        if not path.is_file():
            raise DataError(str(path), "model file not found (smartcache train writes OUT/model.pt)")
        state = load_plain(path, "model file")
        self.cfg = config_from_dict(_plain(state["config"]))
        self.num_classes, self.labels = int(state["num_classes"]), tuple(state["labels"])
        self.device = torch.device(device)
        self.model = build_model(self.cfg.training, int(state["in_channels"]), self.num_classes).to(self.device)
        self.model.load_state_dict({k.removeprefix("module."): v for k, v in state["weights"].items()})
        self.chain = _image_chain(self.cfg, state["normalization"], _plain(state["stats"]))

    def segment(self, image_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
        """(label map on the input's grid as uint8, the input's affine)."""
        data, affine = read_nifti(str(image_path), np.float32)
        if not np.isfinite(data).all():
            raise DataError(str(image_path), "image has NaN or infinite voxels")
        image = data[None] if data.ndim == 3 else np.moveaxis(data, -1, 0)
        meta = MetaTensor(torch.from_numpy(image), affine=torch.as_tensor(affine))
        prepared = self.chain({"image": meta})["image"]
        pred = predict_volume(self.model, prepared.numpy(), self.cfg, self.num_classes, self.device)
        back = SpatialResample(mode="nearest", dtype=torch.float32)(
            MetaTensor(torch.from_numpy(pred[None].astype(np.float32)), affine=prepared.affine),
            dst_affine=torch.as_tensor(affine), spatial_size=image.shape[1:])
        return np.rint(np.asarray(back[0])).astype(np.uint8), affine

    def predict_files(self, inputs: list[Path], out_dir: Path) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for path in inputs:
            label, affine = self.segment(path)
            name = path.name.replace(".nii.gz", "").replace(".nii", "")
            target = out_dir / f"{name}_seg.nii.gz"
            nib.save(nib.Nifti1Image(label, affine), target)
            written.append(target)
        return written


def collect_inputs(path: str | Path) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        files = sorted(list(p.glob("*.nii.gz")) + list(p.glob("*.nii")))
        if not files:
            raise DataError(str(p), "folder holds no .nii or .nii.gz files")
        return files
    if not p.is_file():
        raise DataError(str(p), "input file or folder does not exist")
    return [p]
