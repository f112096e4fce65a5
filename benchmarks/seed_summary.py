"""Time to target over several seeds: each arm's times side by side, their median, and the ratio of medians.

One run of one seed is a draw: with 2 validation cases the adaptive ratio swings from one
validation to the next, and with it the epoch at which the mean Dice first crosses the target
(docs/benchmarks.md, "Run to run"). The median over seeds is what a user can expect.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Sequence

from arm_result import ArmResult

__all__ = ["median_time", "format_seed_summary"]


def median_time(results: Sequence[ArmResult], time_limit: float) -> tuple[float, bool]:
    """(median seconds to target, whether it is only a lower bound): a seed that missed counts as the time
    limit, and the median is a lower bound when such a seed is among the middle ones."""
    times = [r.time_to_target_s if r.time_to_target_s is not None else time_limit for r in results]
    unbounded = [r.time_to_target_s if r.time_to_target_s is not None else math.inf for r in results]
    median = statistics.median(times)
    return median, statistics.median(unbounded) != median


def format_seed_summary(runs: Sequence[tuple[int, ArmResult]], time_limit: float, reference: str) -> str:
    """A markdown table: per arm the time to target of every seed, the median and the median's ratio to
    ``reference``'s (how many times sooner the arm reaches the target than the reference arm)."""
    by_arm: dict[str, list[tuple[int, ArmResult]]] = defaultdict(list)
    for seed, result in runs:
        by_arm[result.arm].append((seed, result))
    seeds = sorted({seed for seed, _ in runs})
    ref = median_time([r for _, r in by_arm[reference]], time_limit) if reference in by_arm else None
    lines = [f"time to target per seed (s; a seed that missed counts as the {time_limit:.0f} s limit in the median)",
             f"| arm | {' | '.join(f'seed {s}' for s in seeds)} | median | steps to target | median vs {reference} |",
             "|---|" + "---|" * (len(seeds) + 3)]
    for arm, rows in by_arm.items():
        times = {s: r for s, r in rows}
        cells = [("-" if s not in times else f"{times[s].time_to_target_s:.0f}" if times[s].reached
                  else f"not in {time_limit:.0f}") for s in seeds]
        median, bound = median_time([r for _, r in rows], time_limit)
        steps = " / ".join(str(times[s].steps_to_target or "-") for s in seeds if s in times)
        ratio = "-" if ref is None else _ratio(ref, (median, bound))
        lines.append(f"| {arm} | {' | '.join(cells)} | {'>= ' if bound else ''}{median:.0f} | {steps} | {ratio} |")
    return "\n".join(lines)


def _ratio(ref: tuple[float, bool], arm: tuple[float, bool]) -> str:
    """The reference's median over the arm's, marked where a median is only a lower bound (missed seeds)."""
    value = f"{ref[0] / arm[0]:.2f}x"
    if ref[1] and arm[1]:
        return "n/a (both missed)"
    return f">= {value}" if ref[1] else f"<= {value}" if arm[1] else value
