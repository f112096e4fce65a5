"""Model, step, validation and report pieces on CPU with a tiny network (seconds)."""

import json
import time

import numpy as np
import pytest
import torch

from common.config import load_config
from common.volume import PreparedVolume, class_voxel_indices
from trainer.model import AmpPolicy, build_loss, build_model, build_optimizer
from trainer.progress import bar_total
from trainer.report import RunReport, format_summary, plot_case, plot_curves
from trainer.staging import DeviceStager
from trainer.steps import run_epoch, seed_everything
from trainer.validation import Validator

TINY = ["training.channels=[4, 8]", "training.strides=[2]", "training.num_res_units=0",
        "sampler.patch_size=[16, 16, 16]", "validation.roi_size=[16, 16, 16]"]


def _volume(seed: int = 0) -> PreparedVolume:
    rng = np.random.default_rng(seed)
    label = np.zeros((1, 20, 20, 20), np.uint8)
    label[0, 5:14, 6:15, 4:12] = 1
    image = (label.astype(np.float32) + rng.normal(0, 0.1, label.shape)).astype(np.float32)
    idx, counts = class_voxel_indices(label, 2, image.nbytes)
    return PreparedVolume("v", image, label, idx, counts, np.eye(4), np.eye(4), (20, 20, 20))


def test_amp_policy_by_device():
    cfg = load_config(None, ["training.amp=true"]).training
    assert AmpPolicy.for_device(torch.device("cuda"), cfg).dtype == torch.float16
    assert AmpPolicy.for_device(torch.device("cuda"), cfg).uses_scaler
    assert not AmpPolicy.for_device(torch.device("cpu"), cfg).enabled
    bf16 = load_config(None, ["training.cpu_bf16=true"]).training
    assert AmpPolicy.for_device(torch.device("cpu"), bf16).dtype == torch.bfloat16


@pytest.mark.parametrize("optimizer", ["novograd", "adam", "sgd"])
def test_epoch_reduces_loss_and_is_deterministic(optimizer):
    cfg = load_config(None, TINY + [f"training.optimizer={optimizer}", "training.lr=1e-2"])
    vol = _volume()
    batch = {"image": torch.from_numpy(vol.image[None, :, :16, :16, :16].copy()),
             "label": torch.from_numpy(vol.label[None, :, :16, :16, :16].copy())}

    def train(stager: DeviceStager | None = None) -> list[float]:
        seed_everything(1, deterministic=True)
        model = build_model(cfg.training, 1, 2)
        opt = build_optimizer(cfg.training, model.parameters())
        amp = AmpPolicy.for_device(torch.device("cpu"), cfg.training)
        return [run_epoch(model, [batch] * 5, build_loss(), opt, amp, amp.scaler(), torch.device("cpu"),
                          e, 1.0, 0, stager=stager).loss for e in range(3)]

    first, second = train(), train()
    assert first == second
    assert first[-1] < first[0]
    # the staging-buffer path (reused buffers, next copy issued before the step) trains identically
    assert train(DeviceStager("cpu", slots=2, staging=True)) == first


def test_epoch_records_when_its_first_batch_arrived():
    """The sweep benchmark's time to first step: the wall clock at the first batch, after the loader's delay."""
    cfg = load_config(None, TINY)
    vol = _volume()
    batch = {"image": torch.from_numpy(vol.image[None, :, :16, :16, :16].copy()),
             "label": torch.from_numpy(vol.label[None, :, :16, :16, :16].copy())}

    def slow_first(n: int):
        time.sleep(0.3)  # a loader still preparing its first volume
        yield from [batch] * n

    model = build_model(cfg.training, 1, 2)
    amp = AmpPolicy.for_device(torch.device("cpu"), cfg.training)
    t0 = time.time()
    stats = run_epoch(model, slow_first(2), build_loss(), build_optimizer(cfg.training, model.parameters()), amp,
                      amp.scaler(), torch.device("cpu"), 0, 1.0, 0)
    assert stats.first_batch_at is not None and t0 + 0.3 <= stats.first_batch_at <= time.time()
    assert stats.metrics_row(1.0, 0, 0.0)["first_batch_at"] == stats.first_batch_at
    empty = run_epoch(model, [], build_loss(), build_optimizer(cfg.training, model.parameters()), amp,
                      amp.scaler(), torch.device("cpu"), 1, 1.0, 0)
    assert empty.first_batch_at is None and empty.steps == 0


@pytest.mark.parametrize("keep_largest", [False, True])
def test_validator_publishes_dice_and_ratio(keep_largest):
    cfg = load_config(None, TINY + ["sampler.ratio_bounds=[0.25, 4]",
                                    f"validation.keep_largest_component={str(keep_largest).lower()}"])
    published = []
    val = Validator(cfg, num_classes=2, in_channels=1, publish=published.append)
    model = build_model(cfg.training, 1, 2)
    result = val.validate(3, model.state_dict(), [_volume()])
    assert published == [result]
    assert result.epoch == 3 and len(result.dice_per_class) == 1
    assert 0.0 <= result.mean_dice <= 1.0
    assert 0.25 <= result.ratio <= 4.0
    assert result.ratio == pytest.approx(min(4.0, max(0.25, result.r_fn / result.r_fp)))


def test_report_files_and_summary(tmp_path):
    rows = [{"epoch": e, "time_s": 10.0 * e, "loss": 1 - 0.1 * e, "ratio": 1.0} for e in range(4)]
    vals = [{"epoch": e, "time_s": 10.0 * e + 5, "mean_dice": 0.2 * e, "dice_per_class": [0.2 * e, 0.1 * e],
             "ratio": 1.0 + e} for e in range(4)]
    legend = plot_curves(tmp_path / "curves.png", rows, vals, 0.5, class_names=["organ", "lesion"])
    assert legend == ["mean foreground", "organ", "lesion", "target 0.5"]  # the dataset's names, not "class 1"
    vol = _volume()
    plot_case(tmp_path / "case.png", vol.image, vol.label, vol.label[0], "v")
    assert (tmp_path / "curves.png").stat().st_size > 10_000 and (tmp_path / "case.png").stat().st_size > 10_000
    rep = RunReport("e1", 0.6, 3, {"organ": 0.6}, 0.5, True, 35.0, 4, 60.0, 5.0, 40.0, 0.02, 8.0, [1.0, 2.0])
    assert json.loads(rep.to_json())["time_to_target_s"] == 35.0
    text = format_summary(rep)
    assert "REACHED" in text and "35 s" in text and "2.0 %" in text


def test_progress_bar_counts_epochs_without_a_total_when_a_time_limit_ends_the_run():
    assert bar_total(load_config(None, ["training.epochs=30"])) == 30
    assert bar_total(load_config(None, ["training.epochs=100000", "training.time_limit_s=300"])) is None
