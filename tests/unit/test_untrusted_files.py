"""Files read back (model.pt, checkpoints) are tensors and plain data only, written whole, and chosen safely."""

import errno
import os
import shutil
from pathlib import Path

import pytest
import torch

from common.config import load_config
from common.errors import DataError, StorageError
from trainer import checkpoints
from trainer.checkpoints import CHECKPOINT_FILE, load_checkpoint, newest_loadable, write_checkpoint
from trainer.model import build_model, build_optimizer
from trainer.predict import Predictor, save_model_file

TINY = ["training.channels=[4, 8]", "training.strides=[2]", "training.num_res_units=0",
        "sampler.patch_size=[16, 16, 16]", "validation.roi_size=[16, 16, 16]"]


class RunsShell:
    """What an attacker pickles: unpickling it calls os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _training_state(epoch: int) -> dict:
    """A real checkpoint body: a network, a NovoGrad optimiser after one step, a grad scaler."""
    cfg = load_config(None, TINY).training
    model = build_model(cfg, 1, 2)
    optimizer = build_optimizer(cfg, model.parameters())
    model(torch.randn(1, 1, 16, 16, 16)).sum().backward()
    optimizer.step()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "epoch": epoch}


def test_a_model_file_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    torch.save({"weights": {}, "config": RunsShell(marker)}, tmp_path / "model.pt")
    with pytest.raises(DataError, match="model.pt: refused to load this model file: it holds pickled objects"):
        Predictor(tmp_path)
    assert not marker.exists()


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    torch.save({"epoch": 1, "model": RunsShell(marker)}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(DataError, match="refused to load this checkpoint"):
        load_checkpoint(tmp_path)
    assert not marker.exists()


def test_the_model_file_training_writes_loads_with_weights_only(tmp_path):
    cfg = load_config(None, TINY)
    weights = build_model(cfg.training, 1, 2).state_dict()
    save_model_file(tmp_path / "model.pt", weights, cfg, 2, 1, ("background", "box"), "mri", None)
    torch.load(tmp_path / "model.pt", weights_only=True)  # raises if anything but plain data is inside
    predictor = Predictor(tmp_path / "model.pt")
    assert predictor.cfg == cfg and predictor.labels == ("background", "box")
    assert not list(tmp_path.glob(".tmp-*"))  # written through a temp file that was renamed


def test_a_real_training_checkpoint_round_trips_with_weights_only(tmp_path):
    state = _training_state(3)
    write_checkpoint(tmp_path, state)
    back = load_checkpoint(tmp_path)
    assert back["epoch"] == 3 and back["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    assert all(torch.equal(back["model"][k], v) for k, v in state["model"].items())


def _checkpoint(root: Path, name: str, epoch: int, mtime: float) -> Path:
    folder = root / "ray_results" / "run" / name
    folder.mkdir(parents=True)
    write_checkpoint(folder, _training_state(epoch))
    os.utime(folder, (mtime, mtime))
    return folder


def test_resume_skips_a_truncated_newest_checkpoint(tmp_path, capsys):
    older = _checkpoint(tmp_path, "checkpoint_000000", 0, 1000.0)
    newest = _checkpoint(tmp_path, "checkpoint_000001", 1, 2000.0)
    data = (newest / CHECKPOINT_FILE).read_bytes()
    (newest / CHECKPOINT_FILE).write_bytes(data[: len(data) // 2])  # what a full disk leaves behind
    os.utime(newest, (2000.0, 2000.0))
    (tmp_path / "ray_results" / "run" / "checkpoint_manager_snapshot.json").write_text("{}")
    chosen = newest_loadable(tmp_path)
    assert chosen is not None and Path(chosen.path) == older
    warning = capsys.readouterr().out
    assert f"skipping checkpoint {newest}" in warning and "truncated, corrupt or unreadable" in warning


def test_resume_takes_the_newest_checkpoint_when_it_loads(tmp_path):
    _checkpoint(tmp_path, "checkpoint_000000", 0, 1000.0)
    newest = _checkpoint(tmp_path, "checkpoint_000001", 1, 2000.0)
    assert Path(newest_loadable(tmp_path).path) == newest
    shutil.rmtree(tmp_path / "ray_results")
    assert newest_loadable(tmp_path) is None


def test_a_full_disk_while_checkpointing_names_the_path_and_keeps_the_old_file(tmp_path, monkeypatch):
    write_checkpoint(tmp_path, _training_state(0))
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()

    def no_space(obj, fh):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.torch, "save", no_space)
    with pytest.raises(StorageError, match=f"{tmp_path / CHECKPOINT_FILE}: could not write the checkpoint "
                                           "\\(No space left on device\\)"):
        write_checkpoint(tmp_path, _training_state(1))
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_model_file_from_before_json_fields_still_loads(tmp_path):
    """Files written when config and statistics were dicts hold plain data too, so they load as before."""
    cfg = load_config(None, TINY)
    torch.save({"weights": build_model(cfg.training, 1, 2).state_dict(), "config": cfg.to_dict(), "num_classes": 2,
                "in_channels": 1, "labels": ["background", "box"], "normalization": "ct",
                "stats": {"lower": -100.0, "upper": 240.0, "percentiles": (0.5, 99.5), "num_volumes": 3}},
               tmp_path / "model.pt")
    assert Predictor(tmp_path / "model.pt").cfg == cfg


def test_an_unreadable_or_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / CHECKPOINT_FILE}: checkpoint is missing"):
        load_checkpoint(tmp_path)
    (tmp_path / CHECKPOINT_FILE).mkdir()  # a directory where the file should be: the read fails with an OSError
    with pytest.raises(DataError, match="checkpoint is truncated, corrupt or unreadable"):
        load_checkpoint(tmp_path)
