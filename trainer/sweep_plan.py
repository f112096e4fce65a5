"""The plan of a sweep, made before any trial starts: each trial's config, and which cache it trains on.

Trials whose preprocessing (and data split) is the same have the same fingerprint and share
one cache actor; a searched preprocessing value gives the trials with each value a cache of
their own, which costs a fill and a copy of memory each. The plan says so before the sweep
spends anything, so a user who searched ``preprocessing.spacing`` by mistake sees it at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from common.catalog import fingerprint, load_catalog
from common.config import ExperimentConfig, config_from_dict
from common.errors import ConfigError
from trainer.search_space import apply_values

# sections whose values change what the cache holds: a trial with other values needs another cache
CACHE_SECTIONS = ("data", "preprocessing")


@dataclass(frozen=True)
class TrialPlan:
    """One trial: its index, the searched values, the full config it trains with, its cache."""

    index: int
    name: str
    values: dict[str, Any]
    config: ExperimentConfig
    fingerprint: str


@dataclass(frozen=True)
class SweepPlan:
    """Every trial of a sweep, and the searched keys (the columns of the plan and of the results)."""

    name: str
    trials: list[TrialPlan]
    searched: list[str]

    def caches(self) -> dict[str, list[TrialPlan]]:
        """Fingerprint -> the trials that share its cache, in trial order."""
        groups: dict[str, list[TrialPlan]] = {}
        for t in self.trials:
            groups.setdefault(t.fingerprint, []).append(t)
        return groups

    def trial(self, index: int) -> TrialPlan:
        return self.trials[index]


def trial_config(base: Mapping[str, Any], values: Mapping[str, Any], name: str, dataset_dir: str) -> ExperimentConfig:
    """The config a trial trains with: the base YAML, the trial's values, its name and the dataset."""
    raw = apply_values(base, {**values, "data.dataset_dir": dataset_dir})
    raw["name"] = name
    try:
        return config_from_dict(raw)
    except ConfigError as err:
        raise ConfigError(err.field, err.value, f"{err.allowed} (in the sweep's trial {name}: {dict(values)})") from err


def make_plan(sweep_name: str, base: Mapping[str, Any], trials: Sequence[Mapping[str, Any]], searched: list[str],
              dataset_dir: str) -> SweepPlan:
    """Build and validate every trial's config (a bad value fails here, not an hour into the sweep)."""
    plans: list[TrialPlan] = []
    for i, values in enumerate(trials):
        name = f"{sweep_name}-t{i}"
        cfg = trial_config(base, values, name, dataset_dir)
        catalog = load_catalog(cfg.data.dataset_dir, cfg.data)
        plans.append(TrialPlan(i, name, dict(values), cfg, fingerprint(catalog, cfg.preprocessing)))
    return SweepPlan(sweep_name, plans, searched)


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value) if all(isinstance(v, int) for v in value) else str(list(value))
    return str(value)


def format_plan(plan: SweepPlan) -> str:
    """What is printed at start: one line per cache with its trials, then one line per trial."""
    groups = plan.caches()
    cache_keys = [k for k in plan.searched if k.split(".", 1)[0] in CACHE_SECTIONS]
    lines = [f"sweep {plan.name}: {len(plan.trials)} trials on {len(groups)} cache(s)"]
    for fp, trials in groups.items():
        lines.append(f"  cache {fp[:12]}: trials {', '.join(str(t.index) for t in trials)} share it")
    if len(groups) > 1:
        lines.append(f"  note: {', '.join(cache_keys) or 'the preprocessing'} is searched, so each value has a cache "
                     "of its own (its own fill and memory)")
    for t in plan.trials:
        values = "  ".join(f"{k}={format_value(t.values[k])}" for k in plan.searched)
        where = "in the trial's process" if t.config.training.runs_in_process(sweep_trial=True) else (
            f"Ray Train, {t.config.training.num_workers} worker(s)")
        lines.append(f"  trial {t.index} ({t.name}): {values}  -> cache {t.fingerprint[:12]}, trains {where}")
    return "\n".join(lines)
