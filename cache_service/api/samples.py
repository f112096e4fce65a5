"""Example statuses: a warm pool after a few rotations and an experiment whose sampler has moved.

Used by the tests and by ``smartcache serve --demo --foreground``, which previews the
dashboard without Ray or data.
"""

from __future__ import annotations

from cache_service.names import cache_name
from cache_service.status import CacheStatus, ExperimentStatus, QuarantinedItem, SamplerReport

T0 = 1_700_000_000.0
FINGERPRINT = "0123456789abcdef"


def sampler_history(epochs: int = 8) -> list[SamplerReport]:
    """A ratio that climbs as false negatives dominate, and a Dice that rises towards 0.9."""
    reports = []
    for k in range(epochs):
        ratio = 1.0 + 0.25 * k
        dice = 0.9 * (1 - 0.6 ** (k + 1))
        reports.append(SamplerReport(epoch=2 * (k + 1), ratio=ratio, r_fp=0.02 / ratio, r_fn=0.02 * ratio,
                                     dice_per_class=[dice, dice - 0.05], mean_dice=dice, time=T0 + 60 * k))
    return reports


def experiment(experiment_id: str = "spleen-a1b2c3", epochs: int = 8) -> ExperimentStatus:
    history = sampler_history(epochs)
    seen = [f"case_{k:02d}" for k in range(2, 2 + min(epochs, 9))]  # a pass over the 11 usable items
    return ExperimentStatus(experiment_id=experiment_id, info={"world_size": 2, "host": "node-1"},
                            registered_at=T0, last_report_at=T0 + 600, epoch=2 * epochs + 1,
                            progress={"loss": 0.21, "data_wait_frac": 0.02},
                            ratio=history[-1].ratio if history else 1.0, sampler_history=history,
                            done_generation=3 if epochs else -1, repeated_epochs=max(0, 2 * epochs - 2),
                            cycle_seen=seen if epochs else [], cycles_completed=epochs // 4,
                            cycle_coverage=len(seen) / 11 if epochs else 0.0)


def cache_status(fingerprint: str = FINGERPRINT, experiments: list[ExperimentStatus] | None = None,
                 pool_size: int = 6, train_items: int = 12) -> CacheStatus:
    """Pool of ``pool_size`` of ``train_items`` (ids ``case_00..``), R = 2, one quarantined item."""
    ids = [f"case_{k:02d}" for k in range(train_items)]
    val_ids = [f"val_{k:02d}" for k in range(3)]
    pool = ids[2:2 + pool_size]
    used = {i: 4 - k // 2 for k, i in enumerate(pool)} | {ids[0]: 5, ids[1]: 5} | {v: 9 for v in val_ids}
    return CacheStatus(
        fingerprint=fingerprint, name=cache_name(fingerprint), state="ready", train_items=train_items,
        cache_num=pool_size, capacity=pool_size, items_cached=pool_size, pool=pool, bytes_cached=pool_size * 3 << 20,
        byte_budget=64 << 20, generation=3, rotations=2, replace_num=2, replacements_pending=1,
        replacements_ready=2, val_items_total=3, val_items_cached=3, val_items=val_ids, use_counts=used, prep_seconds_spent=42.0,
        seconds_saved=120.5, quarantined=[QuarantinedItem(item_id=ids[-1], error="label values {7} outside 0..2")],
        experiments=[experiment()] if experiments is None else experiments, uptime_s=900.0,
        rotation_waits_for=[e.experiment_id for e in (experiments or []) if e.done_generation < 3])
