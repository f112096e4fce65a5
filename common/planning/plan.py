"""The plan: every chosen config value with its reason, rendered as a table and a commented YAML.

:func:`make_plan` runs the rules in the order their inputs need (resources, then grid, patch
and network, then pool and validation) and returns a :class:`Plan`; its YAML is an ordinary
experiment file that ``smartcache train --config`` takes, one ``# reason`` per value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import yaml

from common.config import ExperimentConfig, config_from_dict
from common.planning.choice import Choice
from common.planning.fingerprint import DatasetFingerprint
from common.planning.geometry_rules import (
    patch_voxel_budget,
    plan_batch,
    plan_grid,
    plan_network,
    plan_patch_and_depth,
)
from common.planning.machine import Machine
from common.planning.run_rules import (plan_augmentation, plan_cpu_bf16, plan_intensity, plan_optimizer,
                                      plan_resources, step_seconds)
from common.planning.schedule_rules import plan_epochs, plan_pool, plan_validation, samples_per_volume


@dataclass(frozen=True)
class Plan:
    """Planned values in section order; what is not planned keeps the config's default."""

    name: str
    header: tuple[str, ...]
    choices: tuple[Choice, ...]

    def value(self, key: str) -> Any:
        """The planned value of ``section.field`` (KeyError naming the planned keys if it was not planned)."""
        for c in self.choices:
            if c.key == key:
                return c.value
        raise KeyError(f"{key} is not planned; planned keys: {', '.join(c.key for c in self.choices)}")

    def to_raw(self) -> dict[str, Any]:
        """The nested mapping of a config file (``name`` and the planned sections)."""
        raw: dict[str, Any] = {"name": self.name}
        for c in self.choices:
            section, field = c.key.split(".")
            raw.setdefault(section, {})[field] = c.value
        return raw

    def config(self, dataset_dir: str = "") -> ExperimentConfig:
        """The validated config the plan stands for (raises ConfigError if a rule broke a constraint)."""
        raw = self.to_raw()
        raw.setdefault("data", {})["dataset_dir"] = dataset_dir
        return config_from_dict(raw)

    def table(self) -> str:
        """``key  value  reason`` rows for the terminal."""
        width = max(len(c.key) for c in self.choices)
        shown = [(c.key, _flow(c.value)) for c in self.choices]
        vwidth = min(24, max(len(v) for _, v in shown))
        lines = [f"{'key':<{width}}  {'value':<{vwidth}}  reason", "-" * (width + vwidth + 40)]
        lines += [f"{k:<{width}}  {v:<{vwidth}}  {c.reason}" for (k, v), c in zip(shown, self.choices)]
        return "\n".join([*self.header, "", *lines])

    def to_yaml(self) -> str:
        """The experiment file: ``key: value  # reason`` under each section, the plan's inputs on top."""
        out = [f"# {line}" for line in self.header] + [f"name: {self.name}"]
        section = ""
        for c in self.choices:
            sec, field = c.key.split(".")
            if sec != section:
                out.append(f"{sec}:")
                section = sec
            out.append(f"  {field}: {_flow(c.value)}  # {c.reason}")
        return "\n".join(out) + "\n"


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()


def _sorted(choices: list[Choice]) -> tuple[Choice, ...]:
    order = ["preprocessing", "augmentation", "cache", "sampler", "training", "validation"]
    return tuple(sorted(choices, key=lambda c: order.index(c.key.split(".")[0])))


def make_plan(fp: DatasetFingerprint, machine: Machine) -> Plan:
    """Every rule over one fingerprint and one machine; pure and fast (tested without Ray)."""
    res = plan_resources(machine, fp.num_train)
    grid, spacing = plan_grid(fp, machine)
    base = 32 if res.use_gpu else 16
    budget, budget_why = patch_voxel_budget(machine, res.worker_cpus, base, 2)
    patch, depth, patch_choice = plan_patch_and_depth(grid, fp, budget, budget_why)
    batch = plan_batch(patch, budget, machine)
    spv = samples_per_volume(fp.num_train)
    device = next(c.value for c in res.choices if c.key == "sampler.device")
    replace_workers = next(c.value for c in res.choices if c.key == "cache.replace_workers")
    per_rank = math.ceil(fp.num_train / res.num_workers)
    steps = max(1, math.ceil(per_rank * spv.value / batch.value))
    epoch_s = steps * step_seconds(patch, batch.value, res)
    choices = [spacing, *plan_intensity(fp), *plan_augmentation(fp, device), patch_choice, spv,
               *plan_network(depth, base, patch, machine), batch, *res.choices,
               plan_optimizer(fp.num_train),
               Choice("training.loss", "dice_ce", _loss_reason(fp)),
               Choice("training.amp", True, "fp16 + GradScaler on CUDA" if res.use_gpu else "bf16 where cpu_bf16"),
               *plan_cpu_bf16(machine),
               *plan_epochs(steps, res),
               *plan_pool(fp, grid, machine, epoch_s, replace_workers),
               *plan_validation(fp, grid, patch, 2**depth, res, epoch_s, batch.value)]
    header = (f"smartcache plan for {fp.name}: {len(fp.cases)} cases ({fp.num_train} training), modality "
              f"{fp.modality}, classes {list(fp.labels)}",
              f"machine: {machine.describe()}",
              f"median spacing {[round(s, 2) for s in fp.median_spacing()]} mm, median extent "
              f"{[round(e) for e in fp.median_extent_mm()]} mm, one case prepares in {fp.prep_seconds():.1f} s "
              f"at 1 mm; estimated epoch {epoch_s:.0f} s")
    return Plan(f"{fp.name.lower()}-planned", header, _sorted(choices))


def _loss_reason(fp: DatasetFingerprint) -> str:
    smallest = min(fp.mean_class_fractions()[1:], default=0.0)
    if smallest < 0.01:
        return (f"soft Dice + cross-entropy: the smallest class is {smallest:.2%} of the voxels, where Dice "
                "alone starts slowly")
    return (f"soft Dice + cross-entropy (the project's default, nnU-Net's loss); classes are >= {smallest:.1%} "
            "of the voxels")
