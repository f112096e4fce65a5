"""The cache's bookkeeping: what is prepared, what is in the pool, what it costs and what it saved.

:class:`CacheBook` makes every decision of the service (what to prepare next, whether a
prepared volume fits the byte budget, what a rotation swaps, what a snapshot hands out)
and treats object refs as opaque values, so it runs in unit tests without Ray. The actor
only moves refs between Ray and this class.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from cache_service.status import QuarantinedItem
from common.rotation import Rotation, RotationPlan

log = logging.getLogger(__name__)

STORE_SHARE = 0.7  # of the smallest node's object store; the rest is left for weights, batches, other users


def budget_for_store(byte_budget: int, store_bytes: int | None, share: float = STORE_SHARE) -> tuple[int, str]:
    """The byte budget the cache can keep in shared memory, and a message when it had to be lowered.

    A pool larger than the object store would not fail: Ray would spill it to disk behind
    everyone's back and every read would become a disk read. Lowering the budget instead
    makes the cache hold fewer items and say so in its status.
    """
    if not store_bytes:
        return int(byte_budget), ""
    room = int(store_bytes * share)
    if byte_budget <= room:
        return int(byte_budget), ""
    return room, (f"byte budget {byte_budget} B is more than the object store can hold without spilling "
                  f"({store_bytes} B on the smallest node); lowered to {room} B ({share:.0%} of it). Raise "
                  f"object_store_memory (ray start --object-store-memory) or lower cache.byte_budget")


@dataclass(frozen=True)
class PrepMeta:
    """What a preparation task reports beside the volume (small, so the actor never loads the arrays)."""

    item_id: str
    nbytes: int
    prep_seconds: float  # what preparing it cost (or once cost, when read from disk)
    from_disk: bool = False
    disk_note: str | None = None  # why a disk-tier file was rejected, if one was
    disk_error: str | None = None  # what the disk tier's folder refused (read, touch, write, delete), if anything
    spatial_shape: tuple[int, ...] = ()  # after the prefix (empty: unknown); connect checks a patch against it
    cpu_seconds: float = 0.0  # CPU time of the task's process (all its threads) for this item, disk hit or not


@dataclass
class Entry:
    item_id: str
    ref: Any
    nbytes: int
    prep_seconds: float


class CacheBook:
    """Pool, replacements, validation volumes, budget and counters of one cache."""

    def __init__(self, train_ids: Sequence[str], val_ids: Sequence[str], cache_num: int, replace_rate: float,
                 byte_budget: int, replace_workers: int, rng: np.random.Generator,
                 fill_workers: int | None = None) -> None:
        self.plan = RotationPlan(list(train_ids), cache_num, replace_rate, rng)
        self.cache_num = self.plan.capacity
        self.train_total, self.val_ids = len(train_ids), tuple(val_ids)
        self.byte_budget, self.replace_workers = int(byte_budget), replace_workers
        self.fill_workers = fill_workers  # None: the whole fill at once (Ray's resources alone limit it)
        self.entries: dict[str, Entry] = {}  # pool members and ready replacements
        self.val_entries: dict[str, Entry] = {}
        self.in_flight: set[str] = set()
        self.val_in_flight: set[str] = set()
        self.blocked: set[str] = set()  # replacements refused by the budget until the next rotation
        self.val_refused: set[str] = set()
        self.quarantined: dict[str, QuarantinedItem] = {}
        self.train_shapes: dict[str, tuple[int, ...]] = {}  # every training item prepared so far, pool or not
        self.use_counts: Counter[str] = Counter()
        self.prep_seconds_spent = self.seconds_saved = 0.0
        self.prep_cpu_seconds = 0.0  # CPU the preparation tasks used, disk reads included (benchmarks compare it)
        self.disk_hits, self.rotations, self.max_item_bytes = 0, 0, 0
        self.disk_rejected: list[str] = []
        self.disk_tier = "off"  # off | ok | read-only (the actor sets "ok" when a tier is configured)
        self.disk_tier_error = ""
        self.budget_message = self.val_budget_message = self.store_message = ""
        self.warm = False

    # ---- what to prepare -------------------------------------------------------------------
    def next_train_jobs(self) -> list[str]:
        """Pool fill first, then the next R replacements, at most ``replace_workers`` beyond the fill and
        at most ``fill_workers`` in flight while filling (each task is a process holding torch, MONAI and a
        raw volume, and preparing is CPU-bound: more tasks than cores cost memory and start-up, not time)."""
        skip = set(self.entries) | self.in_flight | self.blocked
        todo = [i for i in self.plan.wanted() if i not in skip]
        most = self.plan.deficit + self.replace_workers
        if self.fill_workers is not None:
            most = min(most, max(self.fill_workers, self.replace_workers))
        return todo[:max(0, most - len(self.in_flight))]

    def next_val_jobs(self) -> list[str]:
        """Validation volumes once the pool is warm (training needs the pool first)."""
        if not self.warm:
            return []
        skip = set(self.val_entries) | self.val_in_flight | self.val_refused | set(self.quarantined)
        return [i for i in self.val_ids if i not in skip]

    def beside_training(self, val: bool) -> bool:
        """Whether a job asked for now prepares beside training: a warm pool's replacement, which may be late
        and so yields the CPU (``cache.rotation_nice_increment``); the fill and validation volumes are waited on."""
        return self.warm and not val

    def started(self, item_id: str, val: bool = False) -> None:
        (self.val_in_flight if val else self.in_flight).add(item_id)

    # ---- results ---------------------------------------------------------------------------
    def _ready_bytes(self) -> int:
        pool = set(self.plan.pool)
        return sum(e.nbytes for i, e in self.entries.items() if i not in pool)

    def held_bytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values()) + sum(e.nbytes for e in self.val_entries.values())

    def _reserve(self) -> int:
        """Room kept free for the next R replacements, so rotation never needs to exceed the budget."""
        return max(0, self.plan.replace_num * self.max_item_bytes - self._ready_bytes())

    def _count(self, meta: PrepMeta) -> None:
        self.prep_cpu_seconds += meta.cpu_seconds
        if meta.from_disk:
            self.disk_hits += 1
            self.seconds_saved += meta.prep_seconds
        else:
            self.prep_seconds_spent += meta.prep_seconds
        if meta.disk_note:
            self.disk_rejected.append(meta.disk_note)
        if meta.disk_error and not self.disk_tier_error:
            self.disk_tier, self.disk_tier_error = "read-only", meta.disk_error
            log.warning("disk tier degraded to read-only: %s. The cache keeps serving, preparing what it cannot "
                        "keep on disk; give the tier a writable folder (cache.disk_dir) to skip that work",
                        meta.disk_error)

    def accept(self, meta: PrepMeta, ref: Any) -> bool:
        """Take a prepared training item if the budget allows; returns whether it is held."""
        self.in_flight.discard(meta.item_id)
        self._count(meta)
        if meta.spatial_shape:
            self.train_shapes[meta.item_id] = tuple(meta.spatial_shape)
        if meta.item_id not in self.plan.wanted():  # dropped, or no longer needed after a budget cut
            return False
        self.max_item_bytes = max(self.max_item_bytes, meta.nbytes)
        fills = self.plan.deficit > 0
        reserve = self._reserve() if fills else 0
        if self.held_bytes() + meta.nbytes + reserve > self.byte_budget:
            self._refuse(meta.item_id, fills)
            return False
        self.entries[meta.item_id] = Entry(meta.item_id, ref, meta.nbytes, meta.prep_seconds)
        self._fill()
        return True

    def _refuse(self, item_id: str, fills: bool) -> None:
        if fills:
            self.plan.set_capacity(len(self.plan.pool))
        else:
            self.blocked.add(item_id)
            self.plan.set_capacity(max(0, self.plan.capacity - 1))
        self.budget_message = (f"byte budget {self.byte_budget} B holds {self.plan.capacity} of {self.cache_num} "
                               f"pool items (+{self.plan.replace_num} replacements, "
                               f"{len(self.val_entries)} validation volumes); caching fewer")
        self._fill()

    def _fill(self) -> None:
        ready = set(self.entries) - set(self.plan.pool)
        added = self.plan.fill(ready)
        if added and self.warm:
            self.plan.generation += 1
        if not self.warm and (self.plan.deficit == 0 or not (self.in_flight or self.next_train_jobs())):
            self.warm = True

    def fail(self, item_id: str, error: str, val: bool = False) -> None:
        """Quarantine an item whose preparation failed; the pool is refilled from the rest."""
        self.quarantined[item_id] = QuarantinedItem(item_id=item_id, error=error, split="val" if val else "train")
        if val:
            self.val_in_flight.discard(item_id)
            return
        self.in_flight.discard(item_id)
        self.entries.pop(item_id, None)
        self.plan.drop(item_id)
        self._fill()

    def accept_val(self, meta: PrepMeta, ref: Any) -> bool:
        self.val_in_flight.discard(meta.item_id)
        self._count(meta)
        if self.held_bytes() + meta.nbytes + self._reserve() > self.byte_budget:
            self.val_refused.add(meta.item_id)
            self.val_budget_message = (f"byte budget {self.byte_budget} B: {len(self.val_refused)} validation "
                                   f"volume(s) not cached; validation must load them itself")
            return False
        self.val_entries[meta.item_id] = Entry(meta.item_id, ref, meta.nbytes, meta.prep_seconds)
        return True

    # ---- serving ---------------------------------------------------------------------------
    def rotate(self) -> Rotation:
        """Swap the oldest pool items for ready replacements; drops the book's refs to leavers."""
        rot = self.plan.rotate(set(self.entries) - set(self.plan.pool))
        for item in rot.leaving:
            self.entries.pop(item, None)  # a snapshot that still holds the ref keeps the object alive
        if rot.leaving or rot.entering:
            self.rotations += 1
        self.blocked.clear()
        self._fill()
        return rot

    def _hand_out(self, entries: list[Entry]) -> None:
        for e in entries:
            self.use_counts[e.item_id] += 1
            if self.use_counts[e.item_id] > 1:
                self.seconds_saved += e.prep_seconds

    def snapshot(self) -> tuple[int, tuple[str, ...], tuple[Any, ...]]:
        """(generation, ids, refs) of the pool now, counting each hand-out."""
        entries = [self.entries[i] for i in self.plan.pool]
        self._hand_out(entries)
        return self.plan.generation, tuple(e.item_id for e in entries), tuple(e.ref for e in entries)

    def val_snapshot(self) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        entries = [self.val_entries[i] for i in self.val_ids if i in self.val_entries]
        self._hand_out(entries)
        return tuple(e.item_id for e in entries), tuple(e.ref for e in entries)

    @property
    def failed(self) -> str:
        """Why nothing can be served ('' while something can): every training item is quarantined."""
        bad = [q for q in self.quarantined.values() if q.split == "train"]
        if not self.train_total or len(bad) < self.train_total:
            return ""
        return f"{bad[0].item_id}: {bad[0].error}"

    @property
    def ready(self) -> bool:
        val_done = not (self.val_in_flight or self.next_val_jobs())
        return self.warm and val_done

    def status_fields(self) -> dict[str, Any]:
        pool = self.plan.pool
        return dict(
            state="failed" if self.failed else "ready" if self.ready else "filling", failure=self.failed,
            train_items=self.train_total, cache_num=self.cache_num,
            capacity=self.plan.capacity, items_cached=len(pool), pool=list(pool), bytes_cached=self.held_bytes(),
            byte_budget=self.byte_budget,
            budget_limited=bool(self.budget_message or self.val_budget_message or self.store_message),
            budget_message="; ".join(m for m in (self.store_message, self.budget_message, self.val_budget_message)
                                     if m),
            generation=self.plan.generation, rotations=self.rotations,
            replace_num=self.plan.replace_num, replacements_pending=len(self.in_flight),
            replacements_ready=len(self.entries) - len(pool), val_items_total=len(self.val_ids),
            val_items_cached=len(self.val_entries), val_items=list(self.val_entries), use_counts=dict(self.use_counts),
            prep_seconds_spent=self.prep_seconds_spent, seconds_saved=self.seconds_saved,
            prep_cpu_seconds=self.prep_cpu_seconds,
            disk_hits=self.disk_hits, disk_rejected=list(self.disk_rejected), disk_tier=self.disk_tier,
            disk_tier_error=self.disk_tier_error,
            quarantined=list(self.quarantined.values()),
            train_shapes={i: list(shape) for i, shape in self.train_shapes.items()})
