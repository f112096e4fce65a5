"""`smartcache predict` writes label maps on the input's own grid that overlay the input."""

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from common.config import load_config
from trainer.model import build_model
from trainer.predict import Predictor, collect_inputs, save_model_file
from trainer.cli import main


class Threshold(torch.nn.Module):
    """Class 1 wherever the normalised intensity is positive: a network whose answer we know."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-x[:, :1], x[:, :1]], dim=1)


def _oblique_scan(path: Path) -> tuple[np.ndarray, np.ndarray]:
    spacing = np.array([2.0, 1.5, 3.0])
    affine = np.eye(4)
    affine[:3, :3] = np.array([[0, 0, -1], [-1, 0, 0], [0, -1, 0]], dtype=float) * spacing
    affine[:3, 3] = [25.0, 30.0, 20.0]
    shape = (40, 30, 20)
    xyz = (affine[:3, :3] @ np.indices(shape).reshape(3, -1) + affine[:3, 3:4]).reshape((3, *shape))
    inside = (np.abs(xyz[0] - 5) < 12) & (np.abs(xyz[1]) < 15) & (np.abs(xyz[2] - 2) < 10)
    nib.save(nib.Nifti1Image(np.where(inside, 200.0, 10.0).astype(np.float32), affine), path)
    return inside, affine


def test_prediction_overlays_the_input(tmp_path):
    cfg = load_config(None, ["training.channels=[4, 8]", "training.strides=[2]", "training.num_res_units=0",
                             "sampler.patch_size=[16, 16, 16]", "validation.roi_size=[32, 32, 32]"])
    model_file = tmp_path / "model.pt"
    save_model_file(model_file, build_model(cfg.training, 1, 2).state_dict(), cfg, 2, 1,
                    ("background", "box"), "mri", None)
    inside, affine = _oblique_scan(tmp_path / "scan.nii.gz")
    predictor = Predictor(model_file)
    predictor.model = Threshold()
    label, out_affine = predictor.segment(tmp_path / "scan.nii.gz")
    assert label.shape == inside.shape and label.dtype == np.uint8
    np.testing.assert_allclose(out_affine, affine)
    dice = 2 * (label.astype(bool) & inside).sum() / (label.astype(bool).sum() + inside.sum())
    assert dice > 0.97


def test_predict_cli_writes_files_with_input_geometry(tmp_path, capsys):
    cfg = load_config(None, ["training.channels=[4, 8]", "training.strides=[2]", "training.num_res_units=0",
                             "sampler.patch_size=[16, 16, 16]", "validation.roi_size=[16, 16, 16]"])
    save_model_file(tmp_path / "model.pt", build_model(cfg.training, 1, 2).state_dict(), cfg, 2, 1,
                    ("background", "box"), "mri", None)
    (tmp_path / "in").mkdir()
    _, affine = _oblique_scan(tmp_path / "in" / "a.nii.gz")
    assert main(["predict", "--checkpoint", str(tmp_path), "--input", str(tmp_path / "in"),
                 "--out", str(tmp_path / "out")]) == 0
    out = nib.load(tmp_path / "out" / "a_seg.nii.gz")
    assert out.shape == (40, 30, 20) and np.allclose(out.affine, affine)
    assert collect_inputs(tmp_path / "in") == [tmp_path / "in" / "a.nii.gz"]


def test_predict_cli_names_a_missing_input(tmp_path, capsys):
    assert main(["predict", "--checkpoint", str(tmp_path), "--input", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "model.pt" in capsys.readouterr().err
