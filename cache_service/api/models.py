"""Response models the API adds to :mod:`cache_service.status` (which it reuses as is)."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, Field

from cache_service.status import ExperimentStatus, SamplerReport


class Health(BaseModel):
    """Liveness of the API process itself; says nothing about the caches (so it needs no token)."""

    status: str = "ok"
    auth_required: bool


class ItemState(str, Enum):
    """Where a training item is in the SmartCache cycle."""

    in_pool = "in_pool"  # served to trainers now
    leaving = "leaving"  # in the pool, among the R oldest: goes at the next rotation with ready replacements
    waiting = "waiting"  # outside the pool, queued to re-enter
    quarantined = "quarantined"  # preparation failed; never served
    validation = "validation"  # a validation volume, cached whole for the validation actor; never in the pool


class CacheItem(BaseModel):
    """One item of one cache."""

    item_id: str
    state: ItemState
    pool_position: int | None = None  # 0 = oldest pool member
    use_count: int = 0  # epoch snapshots that handed it out
    bytes: int | None = None  # None: the service does not report per-item sizes
    error: str | None = None  # why it is quarantined
    split: str = "train"


class CacheItems(BaseModel):
    """The items of one cache; ``waiting_unlisted`` counts queued items never handed out (ids not reported)."""

    fingerprint: str
    name: str
    generation: int
    replace_num: int
    items: list[CacheItem]
    waiting_unlisted: int = 0


class ExperimentView(ExperimentStatus):
    """An experiment and the cache (fingerprint) it is attached to."""

    fingerprint: str


class ExperimentSummary(BaseModel):
    """One row of ``GET /experiments``: the numbers a table shows, not the history."""

    experiment_id: str
    fingerprint: str
    epoch: int
    ratio: float
    last_mean_dice: float | None = None
    reports: int = 0
    registered_at: float
    last_report_at: float | None = None
    info: dict = Field(default_factory=dict)
    restarts: dict[str, int] = Field(default_factory=dict)  # fault kind -> count


class SamplerView(BaseModel):
    """The adaptive sampler of one experiment: current ratio, error indices, last Dice and the history."""

    experiment_id: str
    fingerprint: str
    ratio: float
    pos_fraction: float  # r / (1 + r): share of crops centred on foreground
    epoch: int | None = None  # epoch of the last validation round
    r_fp: float | None = None
    r_fn: float | None = None
    last_mean_dice: float | None = None
    last_dice_per_class: list[float] = Field(default_factory=list)
    history: list[SamplerReport] = Field(default_factory=list)


class Problem(BaseModel):
    """Body of every 4xx/5xx answer the API gives on purpose."""

    detail: str
