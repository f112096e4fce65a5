"""What a sweep leaves behind: the results table, Dice against time for every trial, the best config.

Made from plain records of what each trial reported, so all of it is tested without Tune:
``results.md`` (the table, also printed), ``results.json``, ``dice.png`` and ``best.yaml``,
which ``smartcache train --config best.yaml`` takes as it is.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml
from matplotlib.figure import Figure  # the object API: no pyplot state, no global backend switch

from common.config import ExperimentConfig
from trainer.sweep_plan import SweepPlan, format_value


@dataclass
class TrialOutcome:
    """One trial as it ended: every validation it reported, and how it ended."""

    index: int
    name: str
    values: dict[str, Any]
    fingerprint: str
    state: str = "pending"  # pending | running | done | stopped | error
    experiment_id: str | None = None
    epochs: int = 0  # epochs trained (the epoch of the last validation + 1)
    history: list[dict[str, float]] = field(default_factory=list)  # {"epoch", "dice", "time_s"} per validation
    error: str = ""

    @property
    def best_dice(self) -> float | None:
        return max((h["dice"] for h in self.history), default=None)

    @property
    def stopped_early(self) -> bool:
        return self.state == "stopped"

    def time_to(self, target: float) -> float | None:
        """Seconds from the trial's start to its first validation at or above ``target``."""
        return next((h["time_s"] for h in self.history if h["dice"] >= target), None)


def best_trial(outcomes: Sequence[TrialOutcome]) -> TrialOutcome | None:
    """The trial with the highest Dice (the earlier one on a tie); None if no trial validated."""
    scored = [o for o in outcomes if o.best_dice is not None]
    return max(scored, key=lambda o: (o.best_dice, -o.index)) if scored else None


def results_table(plan: SweepPlan, outcomes: Sequence[TrialOutcome], target: float) -> str:
    """A Markdown table: trial, searched values, cache, best Dice, time to target, epochs, stopped early?"""
    head = ["trial", *plan.searched, "cache", "best Dice", f"time to {target:g} (s)", "epochs", "stopped early",
            "state"]
    rows = [head, ["---"] * len(head)]
    for o in outcomes:
        hit = o.time_to(target)
        rows.append([str(o.index), *(format_value(o.values[k]) for k in plan.searched), o.fingerprint[:12],
                     "-" if o.best_dice is None else f"{o.best_dice:.3f}", "-" if hit is None else f"{hit:.0f}",
                     str(o.epochs), "yes" if o.stopped_early else "no", o.state])
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def plot_dice(path: Path, outcomes: Sequence[TrialOutcome], target: float) -> None:
    """Validation Dice against seconds since each trial started, one line per trial (x marks a stop)."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for o in outcomes:
        if not o.history:
            continue
        xs, ys = [h["time_s"] for h in o.history], [h["dice"] for h in o.history]
        (line,) = ax.plot(xs, ys, marker="o", ms=3, label=f"trial {o.index} ({o.state})")
        if o.stopped_early:
            ax.plot(xs[-1], ys[-1], marker="x", ms=10, color=line.get_color())
    ax.axhline(target, color="grey", ls="--", lw=1, label=f"target {target:g}")
    ax.set_xlabel("seconds since the trial started")
    ax.set_ylabel("validation mean Dice")
    ax.set_ylim(0, 1)
    ax.set_title("sweep: Dice against time (x: stopped early by the scheduler)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _yaml_ready(value: Any) -> Any:
    """Tuples as lists (safe YAML has no tuple), paths as text."""
    if isinstance(value, dict):
        return {k: _yaml_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_yaml_ready(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_best_config(path: Path, cfg: ExperimentConfig, outcome: TrialOutcome) -> None:
    """The winning trial's full config, with a comment saying where it came from."""
    header = (f"# best trial of the sweep: trial {outcome.index} ({outcome.name}), best Dice {outcome.best_dice:.3f}\n"
              f"# searched values: {json.dumps(outcome.values)}\n"
              "# train with it: smartcache train --data DIR --config best.yaml\n")
    path.write_text(header + yaml.safe_dump(_yaml_ready(cfg.to_dict()), sort_keys=False))


def write_results(out: Path, plan: SweepPlan, outcomes: Sequence[TrialOutcome], target: float) -> str:
    """Write results.md / results.json / dice.png / best.yaml into ``out``; returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    table = results_table(plan, outcomes, target)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(
        [{**asdict(o), "best_dice": o.best_dice, "time_to_target_s": o.time_to(target)} for o in outcomes], indent=2))
    plot_dice(out / "dice.png", outcomes, target)
    best = best_trial(outcomes)
    if best is not None:
        write_best_config(out / "best.yaml", plan.trial(best.index).config, best)
    return table
