"""Pure derivations from the service's status models to the API's response models."""

from __future__ import annotations

from cache_service.api.models import CacheItem, CacheItems, ExperimentSummary, ExperimentView, ItemState, SamplerView
from cache_service.status import CacheStatus, SamplerReport


def _pool_items(status: CacheStatus) -> list[CacheItem]:
    """Pool members oldest first; the R oldest are the ones the next rotation swaps out."""
    leaving = min(status.replace_num, len(status.pool))
    return [CacheItem(item_id=i, state=ItemState.leaving if pos < leaving else ItemState.in_pool,
                      pool_position=pos, use_count=status.use_counts.get(i, 0))
            for pos, i in enumerate(status.pool)]


def items_of(status: CacheStatus, state: ItemState | None = None) -> CacheItems:
    """Every item the status names: pool, items handed out before (now waiting), validation volumes,
    quarantined ones.

    The status lists waiting items only through their use counts, so queued items never
    handed out are counted in ``waiting_unlisted`` rather than invented.
    """
    quarantined = {q.item_id: q for q in status.quarantined}
    pool = _pool_items(status)
    seen = set(status.pool) | set(quarantined) | set(status.val_items)
    waiting = [CacheItem(item_id=i, state=ItemState.waiting, use_count=n)
               for i, n in sorted(status.use_counts.items()) if i not in seen]
    val = [CacheItem(item_id=i, state=ItemState.validation, split="val", use_count=status.use_counts.get(i, 0))
           for i in status.val_items if i not in quarantined]
    bad = [CacheItem(item_id=q.item_id, state=ItemState.quarantined, error=q.error, split=q.split,
                     use_count=status.use_counts.get(q.item_id, 0)) for q in quarantined.values()]
    train_bad = sum(q.split == "train" for q in quarantined.values())
    unlisted = max(0, status.train_items - len(status.pool) - train_bad - len(waiting))
    items = [it for it in pool + waiting + val + bad if state is None or it.state == state]
    return CacheItems(fingerprint=status.fingerprint, name=status.name, generation=status.generation,
                      replace_num=status.replace_num, items=items, waiting_unlisted=unlisted)


def _last(history: list[SamplerReport]) -> SamplerReport | None:
    return history[-1] if history else None


def summary_of(exp: ExperimentView) -> ExperimentSummary:
    last = _last(exp.sampler_history)
    return ExperimentSummary(experiment_id=exp.experiment_id, fingerprint=exp.fingerprint, epoch=exp.epoch,
                             ratio=exp.ratio, last_mean_dice=last.mean_dice if last else None,
                             reports=len(exp.sampler_history), registered_at=exp.registered_at,
                             last_report_at=exp.last_report_at, info=exp.info, restarts=dict(exp.restarts))


def sampler_of(exp: ExperimentView, history: list[SamplerReport]) -> SamplerView:
    """The sampler now (ratio the trainers read next epoch) and the reports that led there."""
    last = _last(history)
    return SamplerView(experiment_id=exp.experiment_id, fingerprint=exp.fingerprint, ratio=exp.ratio,
                       pos_fraction=exp.ratio / (1.0 + exp.ratio), epoch=last.epoch if last else None,
                       r_fp=last.r_fp if last else None, r_fn=last.r_fn if last else None,
                       last_mean_dice=last.mean_dice if last else None,
                       last_dice_per_class=list(last.dice_per_class) if last else [], history=history)
