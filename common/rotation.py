"""SmartCache rotation policy as plain bookkeeping: which items are in the pool, which go next.

The pool is a FIFO of ``capacity`` item ids; the items outside it wait in a queue in a
fixed (seeded) order. A rotation moves up to ``R = ceil(cache_num * replace_rate)`` items
from the head of the queue into the pool and the same number of the oldest pool items to
the tail of the queue. Because the queue is cyclic, every waiting item enters once per
full cycle of ``ceil((N - cache_num) / R)`` rotations, and no item is ever in the pool twice.

The service only swaps in replacements that are already prepared ("ready"), so
:meth:`RotationPlan.rotate` takes the ready set as an argument and never waits: with
fewer ready items it replaces fewer. Quarantined items are dropped from the cycle for good
and :meth:`RotationPlan.fill` tops the pool up from the queue. Nothing here imports Ray.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Collection, Sequence

import numpy as np


def replace_count(cache_num: int, replace_rate: float, num_items: int) -> int:
    """R: items swapped per rotation; 0 when the pool already holds every item."""
    if cache_num >= num_items or replace_rate <= 0:
        return 0
    return min(num_items - cache_num, max(1, math.ceil(cache_num * replace_rate)))


@dataclass(frozen=True)
class Rotation:
    """One pool change: ids that left (oldest first) and ids that entered (queue order)."""

    generation: int
    leaving: tuple[str, ...]
    entering: tuple[str, ...]


class RotationPlan:
    """Mutable pool/queue state for one cache; the order is drawn once from ``rng``."""

    def __init__(self, item_ids: Sequence[str], cache_num: int, replace_rate: float,
                 rng: np.random.Generator) -> None:
        if len(set(item_ids)) != len(item_ids):
            raise ValueError("item ids must be unique")
        if cache_num < 1:
            raise ValueError(f"cache_num must be >= 1, got {cache_num}")
        order = [item_ids[i] for i in rng.permutation(len(item_ids))]
        self.capacity = min(cache_num, len(order))
        self.replace_num = replace_count(self.capacity, replace_rate, len(order))
        self.generation = 0
        self._pool: deque[str] = deque()
        self._waiting: deque[str] = deque(order)
        self.dropped: list[str] = []

    @property
    def pool(self) -> tuple[str, ...]:
        """Pool members, oldest first."""
        return tuple(self._pool)

    @property
    def waiting(self) -> tuple[str, ...]:
        """Items outside the pool, next to enter first."""
        return tuple(self._waiting)

    @property
    def deficit(self) -> int:
        """Free pool slots (during warm-up, or after a quarantine or budget cut)."""
        return max(0, self.capacity - len(self._pool))

    def wanted(self) -> tuple[str, ...]:
        """Items to have prepared now: enough to fill the pool plus the next R replacements."""
        return tuple(list(self._waiting)[: self.deficit + self.replace_num])

    def fill(self, ready: Collection[str]) -> tuple[str, ...]:
        """Move the ready head of the queue into free slots, in queue order; returns the ids added.

        Only the queue head may fill, and only in its order (an item ready before the one ahead
        of it waits for it), so neither the pool nor its order, which every consumer's epoch
        shuffle starts from, depends on which preparation finished first.
        """
        added = []
        for item in list(self._waiting)[: self.deficit]:
            if item not in ready:
                break
            added.append(item)
        for item in added:
            self._waiting.remove(item)
            self._pool.append(item)
        return tuple(added)

    def rotate(self, ready: Collection[str]) -> Rotation:
        """Swap the oldest pool items for ready replacements among the next R; never waits.

        Shrinks the pool first if ``capacity`` was lowered, so the pool never exceeds it.
        """
        excess = max(0, len(self._pool) - self.capacity)
        entering = [i for i in list(self._waiting)[: self.replace_num] if i in ready]
        leaving = [self._pool.popleft() for _ in range(min(len(self._pool), len(entering) + excess))]
        for item in entering:
            self._waiting.remove(item)
            self._pool.append(item)
        self._waiting.extend(leaving)
        if leaving or entering:
            self.generation += 1
        return Rotation(self.generation, tuple(leaving), tuple(entering))

    def drop(self, item_id: str) -> None:
        """Take an item out of the cycle for good (quarantined); its pool slot becomes free."""
        if item_id in self._pool:
            self._pool.remove(item_id)
        elif item_id in self._waiting:
            self._waiting.remove(item_id)
        else:
            return
        self.dropped.append(item_id)

    def set_capacity(self, capacity: int) -> None:
        """Lower (or raise) the pool size, e.g. when the byte budget cannot hold ``cache_num`` items."""
        self.capacity = max(0, capacity)
