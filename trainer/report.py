"""What a run leaves behind: report.json, metrics.jsonl, TensorBoard events, two PNGs.

A person should see at a glance whether the run reached its target, how long it took and
where the time went (waiting for data, computing, validating), and look at a picture of
a validation case rather than trust a number.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure  # the object API: no pyplot state, no global backend switch
from torch.utils.tensorboard import SummaryWriter

from common.catalog import Catalog
from common.config import ExperimentConfig


@dataclass
class RunReport:
    """The summary written to ``report.json`` and printed at the end of ``smartcache train``."""

    experiment_id: str
    best_mean_dice: float
    best_epoch: int | None
    dice_per_class: dict[str, float]
    target_dice: float
    reached_target: bool
    time_to_target_s: float | None
    epochs: int
    wall_seconds: float
    cache_fill_seconds: float
    train_seconds: float
    data_wait_fraction: float
    validation_seconds: float
    ratio_history: list[float]
    resumed_from_epoch: int | None = None
    faults: list[dict[str, Any]] = field(default_factory=list)  # FaultEvent dicts, oldest first
    restarts: dict[str, int] = field(default_factory=dict)  # fault kind -> count
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def count_restarts(faults: Sequence[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in faults:
        counts[f["kind"]] = counts.get(f["kind"], 0) + 1
    return counts


def fault_lines(faults: Sequence[dict[str, Any]]) -> list[str]:
    """One line per fault: what died, at which epoch, what it cost, why."""
    lines = []
    for f in faults:
        lost = "?" if f.get("seconds_lost") is None else f"{f['seconds_lost']:.1f} s"
        epoch = "-" if f.get("epoch") is None else str(f["epoch"])
        lines.append(f"fault: {f['kind']} restarted at epoch {epoch}, {lost} lost: {f.get('cause', '')}")
    return lines


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_tensorboard(out: Path, train_rows: Sequence[dict[str, Any]], val_rows: Sequence[dict[str, Any]]) -> None:
    """Scalars per epoch for TensorBoard (``tensorboard --logdir OUT/tensorboard``)."""
    with SummaryWriter(str(out / "tensorboard")) as writer:
        for row in train_rows:
            for key in ("loss", "wait_fraction", "positive_fraction", "ratio"):
                if key in row and row[key] is not None and not math.isnan(float(row[key])):
                    writer.add_scalar(f"train/{key}", float(row[key]), int(row["epoch"]))
        for row in val_rows:
            writer.add_scalar("val/mean_dice", row["mean_dice"], int(row["epoch"]))
            writer.add_scalar("val/next_ratio", row["ratio"], int(row["epoch"]))
            for c, d in enumerate(row["dice_per_class"], start=1):
                writer.add_scalar(f"val/dice_class_{c}", d, int(row["epoch"]))


def plot_curves(path: Path, train_rows: Sequence[dict[str, Any]], val_rows: Sequence[dict[str, Any]],
                target: float, class_names: Sequence[str] = ()) -> list[str]:
    """Dice, loss and the pos:neg ratio against wall time, one panel each; returns the Dice legend's labels.

    Classes are labelled with the dataset's names (``dataset.json`` labels) where given.
    """
    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3)
    if val_rows:
        t = [r["time_s"] for r in val_rows]
        axes[0].plot(t, [r["mean_dice"] for r in val_rows], "o-", label="mean foreground")
        for c in range(len(val_rows[0]["dice_per_class"])):
            name = class_names[c] if c < len(class_names) else f"class {c + 1}"
            axes[0].plot(t, [r["dice_per_class"][c] for r in val_rows], ".--", alpha=0.7, label=name)
        axes[0].axhline(target, color="grey", ls=":", label=f"target {target:g}")
        axes[2].step(t, [r["ratio"] for r in val_rows], where="post", color="tab:purple")
    axes[0].set(title="validation Dice", xlabel="seconds", ylim=(0, 1))
    legend = axes[0].legend(fontsize=7)
    if train_rows:
        axes[1].plot([r["time_s"] for r in train_rows], [r["loss"] for r in train_rows], "-", color="tab:red")
    axes[1].set(title="training loss (training.loss)", xlabel="seconds")
    axes[2].set(title="pos:neg ratio published", xlabel="seconds", yscale="log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return [text.get_text() for text in legend.get_texts()]


def plot_case(path: Path, image: np.ndarray, label: np.ndarray, pred: np.ndarray, title: str) -> None:
    """Middle axial, coronal and sagittal slices with label (green) and prediction (red) contours."""
    img = np.asarray(image[0])
    lab, prd = np.asarray(label).reshape(img.shape), np.asarray(pred).reshape(img.shape)
    cx, cy, cz = (s // 2 for s in img.shape)
    views = [("axial", np.s_[:, :, cz]), ("coronal", np.s_[:, cy, :]), ("sagittal", np.s_[cx, :, :])]
    fig = Figure(figsize=(12, 4.2))
    axes = fig.subplots(1, 3)
    for ax, (name, sl) in zip(axes, views):
        ax.imshow(img[sl].T, cmap="gray", origin="lower")
        for values, colour in ((lab[sl], "lime"), (prd[sl], "red")):
            for c in np.unique(values[values > 0]):
                ax.contour((values == c).T.astype(float), levels=[0.5], colors=colour, linewidths=1.0)
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(f"{title}   (green: label, red: prediction)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def format_summary(report: RunReport) -> str:
    """The short final report shown in the terminal."""
    ttt = f"{report.time_to_target_s:.0f} s" if report.time_to_target_s is not None else "not reached"
    per_class = ", ".join(f"{k} {v:.3f}" for k, v in report.dice_per_class.items())
    lines = [
        f"experiment {report.experiment_id}: best mean Dice {report.best_mean_dice:.3f} "
        f"(epoch {report.best_epoch}) [{per_class}]",
        f"target {report.target_dice:g}: {'REACHED' if report.reached_target else 'not reached'}, "
        f"time to target {ttt}, {report.epochs} epochs, {report.wall_seconds:.0f} s wall",
        f"where time went: cache fill {report.cache_fill_seconds:.1f} s, training {report.train_seconds:.1f} s "
        f"(waiting for data {100 * report.data_wait_fraction:.1f} % of step time), "
        f"validation {report.validation_seconds:.1f} s (beside training)",
        "ratio history: " + " ".join(f"{r:.2f}" for r in report.ratio_history[-12:]),
        *fault_lines(report.faults),
    ]
    return "\n".join(lines)


def summarise(cfg: ExperimentConfig, catalog: Catalog, experiment_id: str, rows: list[dict[str, Any]],
              val_rows: list[dict[str, Any]], wall: float, fill_s: float, resumed: int | None,
              faults: list[dict[str, Any]]) -> RunReport:
    """The run's report from what the workers (``rows``, every rank) and the validation actor recorded."""
    best = max(val_rows, key=lambda r: r["mean_dice"], default=None)
    hit = next((r for r in val_rows if r["mean_dice"] >= cfg.training.target_dice), None)
    rank0 = [r for r in rows if r.get("rank", 0) == 0]
    step_s = sum(r["step_seconds"] for r in rows)
    wait_s = sum(r["wait_seconds"] for r in rows)
    names = catalog.labels[1:]
    return RunReport(
        experiment_id=experiment_id,
        best_mean_dice=float(best["mean_dice"]) if best else 0.0,
        best_epoch=int(best["epoch"]) if best else None,
        dice_per_class={n: float(d) for n, d in zip(names, best["dice_per_class"])} if best else {},
        target_dice=cfg.training.target_dice, reached_target=hit is not None,
        time_to_target_s=float(hit["time_s"]) if hit else None,
        epochs=len(rank0), wall_seconds=wall, cache_fill_seconds=fill_s,
        train_seconds=sum(r["step_seconds"] + r["wait_seconds"] for r in rank0),
        data_wait_fraction=wait_s / (wait_s + step_s) if wait_s + step_s > 0 else 0.0,
        validation_seconds=sum(r["seconds"] for r in val_rows),
        ratio_history=[float(r["ratio"]) for r in val_rows], resumed_from_epoch=resumed,
        faults=faults, restarts=count_restarts(faults), config=cfg.to_dict())


def write_outputs(out: Path, report: RunReport, rows: list[dict[str, Any]], val_rows: list[dict[str, Any]],
                  example: Any) -> None:
    """Every file a run leaves in ``out`` (report.json, metrics.jsonl, TensorBoard, curves, one case)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(report.to_json())
    write_jsonl(out / "metrics.jsonl", [{"kind": "train", **r} for r in rows] +
                [{"kind": "validation", **r} for r in val_rows])
    rank0 = [r for r in rows if r.get("rank", 0) == 0]
    write_tensorboard(out, rank0, val_rows)
    plot_curves(out / "curves.png", rank0, val_rows, report.target_dice, class_names=list(report.dice_per_class))
    if example is not None:
        item_id, image, label, pred = example
        plot_case(out / "validation_case.png", image, label, pred, f"validation case {item_id}")
