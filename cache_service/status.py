"""Typed status of a cache and of the experiments attached to it (pydantic, ready for a REST layer)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SamplerReport(BaseModel):
    """One sampler update published for an experiment (after a validation round)."""

    epoch: int
    ratio: float
    r_fp: float
    r_fn: float
    dice_per_class: list[float]
    mean_dice: float
    time: float


# what a sweep trial adds to the info it registers with (cache_service.sdk.tune); the API's /sweeps groups by it
SWEEP_KEY, TRIAL_KEY, TRIAL_ID_KEY = "sweep", "trial", "trial_id"


class FaultEvent(BaseModel):
    """One fault a run lived through: which part died, when, why, and what it cost."""

    kind: str  # cache | trainer | validator
    time: float  # wall clock (time.time()) when it was noticed
    epoch: int | None = None  # the epoch training resumed from / was in
    cause: str = ""
    seconds_lost: float | None = None  # time repeated or waited for; None until known


class ExperimentStatus(BaseModel):
    """An attached experiment: what it said about itself, how far it is, what its sampler does."""

    experiment_id: str
    info: dict = Field(default_factory=dict)
    registered_at: float
    last_report_at: float | None = None
    last_heartbeat: float | None = None  # the owner's last lease renewal (None: it holds no lease)
    epoch: int = -1
    progress: dict[str, float] = Field(default_factory=dict)
    ratio: float
    sampler_history: list[SamplerReport] = Field(default_factory=list)
    # fair rotation (common.fair_rotation): the pool rotates once every attached experiment is done with it
    done_generation: int = -1  # newest pool generation this experiment completed an epoch on
    repeated_epochs: int = 0  # epochs that re-used a generation it had already completed (a fast one repeats)
    cycle_seen: list[str] = Field(default_factory=list)  # training items seen since its current cycle began
    cycles_completed: int = 0  # full passes over every (not quarantined) training item
    cycle_coverage: float = 0.0  # len(cycle_seen) / training items, for the current cycle
    restarts: dict[str, int] = Field(default_factory=dict)  # fault kind -> count, for this experiment
    last_fault: FaultEvent | None = None
    faults: list[FaultEvent] = Field(default_factory=list)  # every fault, oldest first


class DetachedExperiment(BaseModel):
    """An experiment the cache detached by itself (its owner stopped renewing its lease), and why."""

    experiment_id: str
    reason: str
    time: float  # wall clock when it was detached


class QuarantinedItem(BaseModel):
    """An item whose preparation failed; it is never served, the rest are."""

    item_id: str
    error: str
    split: str = "train"


class CacheStatus(BaseModel):
    """Everything an operator asks about a cache, in one snapshot."""

    fingerprint: str
    name: str
    state: str  # filling | ready | failed (every training item quarantined: nothing to serve)
    failure: str = ""  # when failed: the first quarantined item and its cause
    train_items: int
    cache_num: int  # the configured pool size (cache_num / cache_rate)
    capacity: int  # the pool size actually targeted (lower when the byte budget is limiting)
    items_cached: int
    pool: list[str]
    bytes_cached: int  # pool + ready replacements + validation volumes held by the cache
    byte_budget: int
    budget_limited: bool = False
    budget_message: str = ""
    generation: int
    rotations: int
    replace_num: int
    replacements_pending: int
    replacements_ready: int
    val_items_total: int
    val_items_cached: int
    val_items: list[str] = Field(default_factory=list)  # ids of the validation volumes held (whole, not in the pool)
    use_counts: dict[str, int] = Field(default_factory=dict)
    prep_seconds_spent: float = 0.0
    prep_cpu_seconds: float = 0.0  # CPU seconds of every preparation task so far (fills, rotations, disk reads)
    seconds_saved: float = 0.0
    disk_hits: int = 0
    disk_rejected: list[str] = Field(default_factory=list)
    disk_tier: str = "off"  # off | ok | read-only (it refused a write, touch or delete: a read-only mount,
    # another user's folder, a full disk; what it cannot keep is prepared instead)
    disk_tier_error: str = ""  # the first refusal, naming the path
    quarantined: list[QuarantinedItem] = Field(default_factory=list)
    # spatial shape after the prefix of every training item prepared so far (kept after it leaves the pool), so a
    # consumer checks its patch at connect time; items not prepared yet are missing
    train_shapes: dict[str, list[int]] = Field(default_factory=dict)
    experiments: list[ExperimentStatus] = Field(default_factory=list)
    rotation_waits_for: list[str] = Field(default_factory=list)  # experiments still owed the current generation
    detached: list[DetachedExperiment] = Field(default_factory=list)  # detached by the cache, newest last
    uptime_s: float = 0.0
    idle_s: float = 0.0  # seconds with no experiment attached (0 while one is)
    restarts: int = 0  # times this cache actor came back after its process died
    last_fault: FaultEvent | None = None


class RegistryState(BaseModel):
    """What a cache writes to disk on every registry change and reads back when Ray restarts it."""

    experiments: list[ExperimentStatus] = Field(default_factory=list)
    last_detach: float | None = None
    detached: list[DetachedExperiment] = Field(default_factory=list)
    restarts: int = 0
    last_fault: FaultEvent | None = None
