"""When a pool shared by several experiments may rotate, and how far each one is through its cycle.

One pool serves every experiment attached to a cache, and they run at their own speeds.
Rotating whenever *any* experiment finishes an epoch would let a fast experiment swap
items out before a slow one ever trained on them. The rule here is:

* the pool rotates only once **every** attached experiment has completed an epoch on the
  current pool generation;
* meanwhile an experiment that is done with the current generation simply takes the same
  pool again for its next epoch (it repeats, it never waits);
* an experiment silent for longer than ``stale_after_s`` (crashed without detaching) no
  longer holds the pool back.

Because every generation is trained on by every experiment, and every training item
enters the pool once per rotation cycle (:mod:`common.rotation`), every experiment sees
every item once per cycle whatever the speed differences. :func:`advance_cycle` keeps the
per-experiment coverage of the current cycle that the status shows. Pure functions only:
the cache actor calls them under its lock, the tests call them directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterable, Mapping


@dataclass(frozen=True)
class Attached:
    """What the policy needs to know about one attached experiment."""

    done_generation: int  # the newest pool generation on which it completed an epoch (-1: none yet)
    last_seen: float  # when it last registered or reported progress (seconds, any clock)


def holding_back(generation: int, experiments: Mapping[str, Attached], now: float,
                 stale_after_s: float) -> list[str]:
    """Experiments the next rotation waits for: live ones that have not finished an epoch on ``generation``."""
    return sorted(name for name, e in experiments.items()
                  if e.done_generation < generation and now - e.last_seen <= stale_after_s)


def rotation_due(generation: int, experiments: Mapping[str, Attached], now: float, stale_after_s: float) -> bool:
    """True when at least one experiment is attached and none of the live ones is still owed this generation."""
    return bool(experiments) and not holding_back(generation, experiments, now, stale_after_s)


@dataclass(frozen=True)
class CycleProgress:
    """One experiment's pass over the training set: the items it trained on since its cycle began."""

    seen: frozenset[str] = frozenset()
    cycles_completed: int = 0

    def coverage(self, active: Collection[str]) -> float:
        """Share of the (not quarantined) training items seen in the current cycle, in [0, 1]."""
        if not active:
            return 0.0
        return len(self.seen & set(active)) / len(active)


def advance_cycle(progress: CycleProgress, epoch_items: Iterable[str], active: Collection[str]) -> CycleProgress:
    """Add an epoch's items; once every active item was seen, the cycle is complete and a new one starts.

    Items of the completing epoch beyond the ones that closed the cycle are not carried
    over: a cycle counts items seen since it began, and the next one begins empty.
    """
    seen = progress.seen | frozenset(epoch_items)
    if active and set(active) <= seen:
        return CycleProgress(frozenset(), progress.cycles_completed + 1)
    return CycleProgress(seen, progress.cycles_completed)
