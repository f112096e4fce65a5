"""The SmartCache service: one detached actor per fingerprint, shared by every experiment.

``SmartCacheService`` is a plain class; :mod:`cache_service.client` turns it into a named,
detached, threaded Ray actor. Public methods only read or update the :class:`CacheBook`
under a lock and return at once, so a snapshot or a rotation never waits for
preprocessing. A background thread submits preparation tasks, collects their results and
frees the actor once no experiment has been attached for ``idle_timeout_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import ray
from ray.exceptions import RayError, RayTaskError

from cache_service.pool import CacheBook, PrepMeta
from cache_service.registry import ExperimentRegistry, end_epoch, rotate_if_fair
from cache_service.snapshot import Snapshot
from cache_service.status import CacheStatus, SamplerReport
from cache_service.tasks import prepare_item
from common.catalog import Catalog, Record
from common.config import CacheConfig
from common.errors import SmartCacheError

log = logging.getLogger(__name__)

POLL_S = 0.1


@dataclass(frozen=True)
class ServiceSpec:
    """Everything the actor needs at creation; picklable."""

    name: str
    fingerprint: str
    catalog: Catalog
    cache: CacheConfig
    preprocessor: bytes  # a pickled common.preprocess.Preprocessor: the actor never imports torch/MONAI
    seed: int = 0
    initial_ratio: float = 1.0


def _error_text(err: BaseException) -> str:
    cause = err.cause if isinstance(err, RayTaskError) and err.cause is not None else err
    return str(cause) if isinstance(cause, SmartCacheError) else f"{type(cause).__name__}: {cause}"


class SmartCacheService:
    """Pool + replacements + validation volumes + experiment registry of one fingerprint."""

    def __init__(self, spec: ServiceSpec) -> None:
        self.spec, self.cfg = spec, spec.cache
        self._records: dict[str, Record] = {r.item_id: r for r in spec.catalog.train + spec.catalog.val}
        train_ids = [r.item_id for r in spec.catalog.train]
        self.book = CacheBook(train_ids, [r.item_id for r in spec.catalog.val], self.cfg.pool_size(len(train_ids)),
                              self.cfg.replace_rate, int(self.cfg.byte_budget), self.cfg.replace_workers,
                              np.random.default_rng(spec.seed))
        self.registry = ExperimentRegistry(spec.initial_ratio)
        self._created = time.time()
        self.registry.last_detach = self._created
        self._lock = threading.RLock()
        self._pending: dict[ray.ObjectRef, tuple[str, bool, ray.ObjectRef]] = {}  # meta ref -> (id, val, vol ref)
        self._prep_ref = ray.put(spec.preprocessor)
        self._task = ray.remote(prepare_item).options(num_returns=2, num_cpus=self.cfg.task_num_cpus)
        self._epoch_snapshots: dict[tuple[str, int | None], Snapshot] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="smartcache-pump", daemon=True)
        self._thread.start()

    # ---- background pump -------------------------------------------------------------------
    def _submit(self) -> None:
        with self._lock:
            jobs = [(i, False) for i in self.book.next_train_jobs()] + [(i, True) for i in self.book.next_val_jobs()]
            for item_id, val in jobs:
                meta_ref, vol_ref = self._task.remote(self._prep_ref, self._records[item_id], self.cfg.disk_dir,
                                                      self.spec.fingerprint)
                self._pending[meta_ref] = (item_id, val, vol_ref)
                self.book.started(item_id, val)

    def _collect(self, meta_ref: ray.ObjectRef) -> None:
        item_id, val, vol_ref = self._pending.pop(meta_ref)
        try:
            meta: PrepMeta = ray.get(meta_ref)
        except RayError as err:
            log.warning("quarantining %s: %s", item_id, _error_text(err))
            with self._lock:
                self.book.fail(item_id, _error_text(err), val)
            return
        with self._lock:
            (self.book.accept_val if val else self.book.accept)(meta, vol_ref)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._submit()
                refs = list(self._pending)
                if refs:
                    done, _ = ray.wait(refs, num_returns=len(refs), timeout=POLL_S, fetch_local=False)
                    for ref in done:
                        self._collect(ref)
                else:
                    time.sleep(POLL_S)
                if self._idle_for() > self.cfg.idle_timeout_s:
                    log.info("no experiment attached for %.0fs; freeing cache %s", self._idle_for(), self.spec.name)
                    self._exit()
                    return
            except Exception:  # keep serving; a bug in one round must not kill the cache
                log.exception("smartcache pump round failed")
                time.sleep(POLL_S)

    def _idle_for(self) -> float:
        with self._lock:
            if len(self.registry) or self.registry.last_detach is None:
                return 0.0
            return time.time() - self.registry.last_detach

    def _exit(self) -> None:
        self._stopping.set()
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    # ---- public API ------------------------------------------------------------------------
    def ping(self) -> dict[str, str]:
        return {"name": self.spec.name, "fingerprint": self.spec.fingerprint,
                "actor_id": ray.get_runtime_context().get_actor_id()}

    def status(self) -> CacheStatus:
        with self._lock:
            return CacheStatus(fingerprint=self.spec.fingerprint, name=self.spec.name,
                               experiments=self.registry.statuses(), uptime_s=time.time() - self._created,
                               idle_s=self._idle_for(), rotation_waits_for=self._waits_for(time.time()),
                               **self.book.status_fields())

    def snapshot(self, experiment_id: str, epoch: int | None = None) -> Snapshot:
        """The pool now, for an epoch; the refs stay valid for as long as the caller holds them.

        With ``epoch`` given, every caller asking for the same (experiment, epoch) gets the
        same snapshot and ratio, so the DDP ranks of one experiment agree on what an epoch
        holds even if a rotation or a new ratio lands between their calls.
        """
        with self._lock:
            key = (experiment_id, epoch)
            if epoch is not None and key in self._epoch_snapshots:
                return self._epoch_snapshots[key]
            ratio = self.registry.get_ratio(experiment_id)
            generation, ids, refs = self.book.snapshot()
            snap = Snapshot(generation, ids, refs, ratio)
            if epoch is not None:
                stale = [k for k in self._epoch_snapshots if k[0] == experiment_id and k[1] < epoch - 1]
                for k in stale:  # keep only the current and the previous epoch's snapshot alive
                    del self._epoch_snapshots[k]
                self._epoch_snapshots[key] = snap
        return snap

    def val_snapshot(self) -> Snapshot:
        with self._lock:
            ids, refs = self.book.val_snapshot()
            return Snapshot(self.book.plan.generation, ids, refs, self.registry.default_ratio)

    def rotate(self) -> dict[str, Any]:
        """Swap the R oldest pool items for ready replacements (fewer if fewer are ready); never waits."""
        with self._lock:
            rot = self.book.rotate()
        return {"generation": rot.generation, "leaving": list(rot.leaving), "entering": list(rot.entering)}

    def register(self, experiment_id: str, info: dict[str, Any] | None = None) -> None:
        with self._lock:
            self.registry.register(experiment_id, info, time.time())

    def unregister(self, experiment_id: str) -> bool:
        with self._lock:
            for key in [k for k in self._epoch_snapshots if k[0] == experiment_id]:
                del self._epoch_snapshots[key]
            gone = self.registry.unregister(experiment_id, time.time())
            if gone:  # the pool may have been waiting only for this experiment
                rotate_if_fair(self.registry, self.book, time.time(), self.cfg.experiment_timeout_s)
            return gone

    def report_progress(self, experiment_id: str, epoch: int, metrics: dict[str, float] | None = None,
                        rotate: bool = True) -> bool:
        """Record a finished epoch; rotate once every attached experiment is done with this generation.

        The epoch's snapshot (memoised by :meth:`snapshot`) says which generation and items
        it trained on. Fair rotation (:mod:`common.fair_rotation`): a fast experiment is
        never waited for and never rotates items away from a slow one; it repeats the pool.
        Returns whether the pool rotated.
        """
        with self._lock:
            snap = self._epoch_snapshots.get((experiment_id, epoch))
            trained_on = (snap.generation, snap.item_ids) if snap is not None else None
            return end_epoch(self.registry, self.book, experiment_id, epoch, metrics, trained_on, time.time(),
                             self.cfg.experiment_timeout_s, rotate)

    def _waits_for(self, now: float) -> list[str]:
        return self.registry.holding_back(self.book.plan.generation, now, self.cfg.experiment_timeout_s)

    def publish_sampler(self, experiment_id: str, ratio: float, r_fp: float, r_fn: float,
                        dice_per_class: Sequence[float], mean_dice: float, epoch: int) -> SamplerReport:
        with self._lock:
            return self.registry.publish_sampler(experiment_id, ratio, r_fp, r_fn, dice_per_class, mean_dice, epoch,
                                                 time.time())

    def get_ratio(self, experiment_id: str) -> float:
        with self._lock:
            return self.registry.get_ratio(experiment_id)

    def sampler_history(self, experiment_id: str) -> list[SamplerReport]:
        with self._lock:
            return list(self.registry.get(experiment_id).sampler_history)

    def stop(self) -> None:
        """Stop the pump; the caller then kills the actor (client.stop_cache does both)."""
        self._stopping.set()
