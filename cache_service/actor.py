"""The SmartCache service: one detached actor per fingerprint, shared by every experiment.

``SmartCacheService`` is a plain class; :mod:`cache_service.client` turns it into a named,
detached, threaded Ray actor, and callers reach it through the typed
:class:`cache_service.handle.CacheHandle` (one method per public method here). Public
methods only read or update the :class:`CacheBook` under a lock and return at once, so a snapshot or
a rotation never waits for preprocessing. A background thread submits preparation tasks, collects
their results, detaches experiments whose owner stopped renewing its lease (``cache.lease_s``)
and frees the actor once none has been attached for ``idle_timeout_s``.

Faults: the actor is created with ``max_restarts``, so when its process dies Ray runs
``__init__`` again under the same name. Every prepared volume was returned by a task this
actor submitted, so Ray made the actor its owner and the volumes die with it; the new
instance warms again (from the disk tier when there is one, which makes that cheap) and
consumers re-attach and take a fresh snapshot (:mod:`cache_service.recovery`). What must
outlive the process, the experiment registry, is written to ``state_path()`` on every
change and read back here when Ray reports the actor as reconstructed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import ray
from ray.exceptions import RayError

from cache_service.pool import CacheBook, PrepMeta, budget_for_store
from cache_service.cluster import smallest_object_store
from cache_service.handle import task_error_text
from cache_service.registry import ExperimentRegistry, end_epoch, restore_registry, rotate_if_due, save_state
from cache_service.snapshot import Snapshot
from cache_service.status import CacheStatus, FaultEvent, SamplerReport
from cache_service.tasks import prepare_item
from common.catalog import Catalog, Record
from common.config import CacheConfig
from common.errors import CacheUnavailableError

log = logging.getLogger(__name__)

POLL_S = 0.1


@dataclass(frozen=True)
class ServiceSpec:
    """Everything the actor needs at creation; picklable.

    Of the experiment's config only the actor's part: the ``cache`` section, the start ratio of
    the sampler and the pool's seed. Crop settings stay with each experiment, training settings
    with the trainers.
    """

    name: str
    fingerprint: str
    catalog: Catalog
    cache: CacheConfig
    preprocessor: bytes  # a pickled common.preprocess.Preprocessor: the actor never imports torch/MONAI
    seed: int = 0
    initial_ratio: float = 1.0


class SmartCacheService:
    """Pool + replacements + validation volumes + experiment registry of one fingerprint."""

    def __init__(self, spec: ServiceSpec) -> None:
        self.spec, self.cfg = spec, spec.cache
        self._records: dict[str, Record] = {r.item_id: r for r in spec.catalog.train + spec.catalog.val}
        train_ids = [r.item_id for r in spec.catalog.train]
        budget, budget_note = budget_for_store(int(self.cfg.byte_budget), smallest_object_store())
        self.book = CacheBook(train_ids, [r.item_id for r in spec.catalog.val], self.cfg.pool_size(len(train_ids)),
                              self.cfg.replace_rate, budget, self.cfg.replace_workers,
                              np.random.default_rng(spec.seed), self.cfg.fill_workers or os.cpu_count() or 1)
        if budget_note:  # a default budget fitted to the store is no news; one the user asked for is
            log.log(logging.WARNING if "byte_budget" in self.cfg.model_fields_set else logging.INFO, budget_note)
            self.book.store_message = budget_note
        if self.cfg.disk_path() is not None:
            self.book.disk_tier = "ok"
        self._created = time.time()
        self._state_file = self.cfg.state_path() / self.cfg.namespace / spec.fingerprint / "registry.json"
        self.restarts, self.last_fault = 0, None
        self._restarted = ray.get_runtime_context().was_current_actor_reconstructed
        self.registry = self._load_registry() if self._restarted else ExperimentRegistry(spec.initial_ratio)
        if not self._restarted:
            self.registry.last_detach = self._created
        self._lock = threading.RLock()
        self._pending: dict[ray.ObjectRef, tuple[str, bool, ray.ObjectRef]] = {}  # meta ref -> (id, val, vol ref)
        self._prep_ref = ray.put(spec.preprocessor)
        self._task = ray.remote(prepare_item).options(num_returns=2, num_cpus=self.cfg.task_num_cpus)
        self._epoch_snapshots: dict[tuple[str, int | None], Snapshot] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="smartcache-pump", daemon=True)
        self._thread.start()

    # ---- what survives a restart -----------------------------------------------------------
    def _load_registry(self) -> ExperimentRegistry:
        """Back after a crash: the saved registry, one more restart, and a fault for every experiment."""
        registry, self.restarts, self.last_fault = restore_registry(self._state_file, self.spec.initial_ratio,
                                                                    self._created)
        log.warning("cache %s restarted (%d); registry of %d experiment(s) restored from %s", self.spec.name,
                    self.restarts, len(registry), self._state_file)
        self._save(registry)
        return registry

    def _save(self, registry: ExperimentRegistry | None = None) -> None:
        """Persist the registry (called under the lock after every change); a disk error only costs durability."""
        try:
            save_state(self._state_file, (registry or self.registry).to_state(self.restarts, self.last_fault))
        except OSError as err:
            log.warning("could not save the registry to %s: %s", self._state_file, err)

    def _note_warm_again(self) -> None:
        """After a restart, record how long warming took as the fault's cost, once."""
        if self.last_fault is None or self.last_fault.seconds_lost is not None or not self.book.ready:
            return
        self.last_fault.seconds_lost = time.time() - self._created
        self.registry.settle_fault(self.last_fault)
        self._save()

    def _refuse_while_warming(self, what: str) -> None:
        """After a restart, hand out nothing until warm: a partial pool must not become an epoch's snapshot."""
        if self._restarted and not self.book.ready:
            raise CacheUnavailableError(self.spec.name, f"warming again after a restart, {what} not ready "
                                                        f"({len(self.book.plan.pool)}/{self.book.plan.capacity})")

    # ---- background pump -------------------------------------------------------------------
    def _submit(self) -> None:
        with self._lock:
            jobs = [(i, False) for i in self.book.next_train_jobs()] + [(i, True) for i in self.book.next_val_jobs()]
            for item_id, val in jobs:
                meta_ref, vol_ref = self._task.remote(self._prep_ref, self._records[item_id], self.cfg,
                                                      self.spec.fingerprint, self.book.beside_training(val))
                self._pending[meta_ref] = (item_id, val, vol_ref)
                self.book.started(item_id, val)

    def _collect(self, meta_ref: ray.ObjectRef) -> None:
        item_id, val, vol_ref = self._pending.pop(meta_ref)
        try:
            meta: PrepMeta = ray.get(meta_ref)
        except RayError as err:
            log.warning("quarantining %s: %s", item_id, task_error_text(err))
            with self._lock:
                self.book.fail(item_id, task_error_text(err), val)
            return
        with self._lock:
            (self.book.accept_val if val else self.book.accept)(meta, vol_ref)
            self._note_warm_again()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._submit()
                self._expire_leases()
                refs = list(self._pending)
                if refs:
                    done, _ = ray.wait(refs, num_returns=1, timeout=POLL_S, fetch_local=False)  # at once, not at POLL_S
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
    def ping(self) -> dict[str, Any]:
        return {"name": self.spec.name, "fingerprint": self.spec.fingerprint,
                "actor_id": ray.get_runtime_context().get_actor_id(), "pid": os.getpid(), "restarts": self.restarts}

    def status(self) -> CacheStatus:
        with self._lock:
            return CacheStatus(fingerprint=self.spec.fingerprint, name=self.spec.name,
                               experiments=self.registry.statuses(), uptime_s=time.time() - self._created,
                               idle_s=self._idle_for(), rotation_waits_for=self.registry.holding_back(
                                   self.book.plan.generation, time.time(), self.cfg.experiment_timeout_s),
                               restarts=self.restarts, last_fault=self.last_fault,
                               detached=list(self.registry.detached),
                               **self.book.status_fields())

    def record_fault(self, experiment_id: str, event: FaultEvent) -> None:
        """A consumer's fault (trainer or validator restart), counted for its experiment and persisted."""
        with self._lock:
            self.registry.record_fault(experiment_id, event)
            self._save()

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
            self._refuse_while_warming("pool")
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
            self._refuse_while_warming("validation volumes")
            ids, refs = self.book.val_snapshot()
            return Snapshot(self.book.plan.generation, ids, refs, self.registry.default_ratio)

    def register(self, experiment_id: str, info: dict[str, Any] | None = None) -> None:
        with self._lock:
            self.registry.register(experiment_id, info, time.time())
            self._save()

    def unregister(self, experiment_id: str) -> bool:
        with self._lock:
            now = time.time()
            gone = self.registry.unregister(experiment_id, now)
            self._forget([experiment_id] if gone else [], now)
            return gone

    def heartbeat(self, experiment_id: str) -> bool:
        """Renew the lease of the experiment's owner (cheap: not persisted); False if unknown (register again)."""
        with self._lock:
            return self.registry.heartbeat(experiment_id, time.time())

    def _expire_leases(self) -> None:
        """Detach experiments whose owner stopped renewing (:mod:`common.liveness`): on a timer and before rotating."""
        with self._lock:
            now = time.time()
            self._forget([d.experiment_id for d in self.registry.expire(now, self.cfg.lease_s)], now)

    def _forget(self, experiment_ids: Sequence[str], now: float) -> None:
        """After a detach (under the lock): drop their snapshots, rotate if they were the only ones waited for."""
        for key in [k for k in self._epoch_snapshots if k[0] in experiment_ids]:
            del self._epoch_snapshots[key]
        if experiment_ids:
            rotate_if_due(self.registry, self.book, now, self.cfg.experiment_timeout_s)
            self._save()

    def report_progress(self, experiment_id: str, epoch: int, metrics: dict[str, float] | None = None) -> bool:
        """Record a finished epoch; rotate once every attached experiment is done with this generation.

        The epoch's snapshot (memoised by :meth:`snapshot`; else the experiment's latest
        earlier one) says which generation and items it trained on. Fair rotation
        (:mod:`common.fair_rotation`): a fast experiment is
        never waited for and never rotates items away from a slow one; it repeats the pool.
        Returns whether the pool rotated.
        """
        self._expire_leases()  # a dead experiment's lease must not hold this decision back
        with self._lock:
            mine = [e for x, e in self._epoch_snapshots if x == experiment_id and e is not None and e <= epoch]
            snap = self._epoch_snapshots[(experiment_id, max(mine))] if mine else None  # its latest epoch's pool
            trained_on = (snap.generation, snap.item_ids) if snap is not None else None
            rotated = end_epoch(self.registry, self.book, experiment_id, epoch, metrics, trained_on, time.time(),
                                self.cfg.experiment_timeout_s)
            self._save()
            return rotated

    def publish_sampler(self, experiment_id: str, ratio: float, r_fp: float, r_fn: float,
                        dice_per_class: Sequence[float], mean_dice: float, epoch: int) -> SamplerReport:
        with self._lock:
            report = self.registry.publish_sampler(experiment_id, ratio, r_fp, r_fn, dice_per_class, mean_dice, epoch,
                                                   time.time())
            self._save()
            return report

    def get_ratio(self, experiment_id: str) -> float:
        with self._lock:
            return self.registry.get_ratio(experiment_id)

    def sampler_history(self, experiment_id: str) -> list[SamplerReport]:
        with self._lock:
            return list(self.registry.get(experiment_id).sampler_history)

    def stop(self) -> None:
        """Stop the pump; the caller then kills the actor (client.stop_cache does both)."""
        self._stopping.set()
