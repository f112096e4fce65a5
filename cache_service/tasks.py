"""The preparation task: read a volume from the disk tier, or preprocess it (and write it there).

It returns two objects: a small :class:`PrepMeta` the actor reads, and the volume itself,
which goes into the object store once and is never loaded by the actor. The cache actor
(and the driver that creates it) import this module only to submit the task; the disk
tier and its pyarrow are imported in the task's own process, the only one that reads files.
"""

from __future__ import annotations

import logging
import pickle
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cache_service.pool import PrepMeta
from common.catalog import Record
from common.config import CacheConfig
from common.priority import call_at_lower_priority
from common.volume import PreparedVolume

if TYPE_CHECKING:
    from common.preprocess import Preprocessor

log = logging.getLogger(__name__)


def prepare_item(preprocessor: "Preprocessor | bytes", record: Record, cache: CacheConfig,
                 fingerprint: str, beside_training: bool = False) -> tuple[PrepMeta, PreparedVolume]:
    """:func:`prepare`; ``beside_training`` (a warm pool's replacement) runs it ``cache.rotation_nice_increment``
    niceness steps below the worker, in a thread of its own, so it yields to training (common/priority.py)."""
    increment = cache.rotation_nice_increment if beside_training else 0
    return call_at_lower_priority(increment, lambda: prepare(preprocessor, record, cache, fingerprint))


def prepare(preprocessor: "Preprocessor | bytes", record: Record, cache: CacheConfig,
            fingerprint: str) -> tuple[PrepMeta, PreparedVolume]:
    """Disk tier hit, else the deterministic prefix; a DataError propagates (the actor quarantines).

    A tier that refuses a read, touch, write or delete never fails the item: the volume
    is prepared (or served) anyway and the refusal travels in ``PrepMeta.disk_error``.

    The preprocessor may come pickled, so the cache actor that submits this task never
    has to import torch and MONAI itself; only a miss unpickles it. The tier's folder is
    resolved here, on the node that reads and writes it. ``PrepMeta.cpu_seconds`` is the
    process CPU time the item took: a task process runs one task at a time, so that is
    this item's work on all the threads the chain uses (what the sweep benchmark sums).
    """
    from cache_service.disk_tier import DiskTier, evict  # pyarrow: here only, the actor imports this module too

    cpu0 = time.process_time()
    note = None
    disk_dir = cache.disk_path()
    tier = DiskTier(disk_dir, fingerprint) if disk_dir else None
    if tier is not None:
        start = time.perf_counter()
        vol, note = tier.read(record.item_id)
        if vol is not None:
            log.debug("disk hit %s in %.3fs", record.item_id, time.perf_counter() - start)
            return PrepMeta(record.item_id, vol.nbytes, vol.prep_seconds, True, None, tier.error,
                            vol.spatial_shape, time.process_time() - cpu0), vol
    if isinstance(preprocessor, bytes):
        preprocessor = pickle.loads(preprocessor)
    vol = preprocessor(record)
    if tier is not None:
        try:
            written = tier.write(vol)
        except OSError as err:  # a full or read-only disk must not stop the cache: it serves what it prepared
            tier.note_error("write", tier.path(record.item_id), err)
        else:
            try:
                evict(disk_dir, int(cache.disk_budget), keep=frozenset({written}))
            except OSError as err:  # e.g. another user's files under a shared root
                tier.note_error("evict old files under", Path(disk_dir), err)
    return PrepMeta(record.item_id, vol.nbytes, vol.prep_seconds, False, note, tier.error if tier else None,
                    vol.spatial_shape, time.process_time() - cpu0), vol
