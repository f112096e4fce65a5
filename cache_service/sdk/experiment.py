"""One experiment on the shared cache: its lease, its epochs' crop batches, its validation reports.

An :class:`Experiment` pickles (fingerprint, namespace, id, settings), so it can be handed to
Ray Train workers in ``train_loop_config``; only the process that opened it renews its lease
(:mod:`cache_service.sdk.lease`) and detaches it. Every call to the cache goes through
:mod:`cache_service.sdk.protocol`.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import ray

from cache_service.handle import CacheCalls
from cache_service.recovery import ResilientCache
from cache_service.sdk import protocol
from cache_service.sdk.batches import ConsumerSettings, CropBatches, CropDataset
from cache_service.sdk.device import DeviceVolumes
from cache_service.sdk.lease import RENEWALS_PER_LEASE, LeaseKeeper
from cache_service.snapshot import Snapshot
from cache_service.status import CacheStatus, ExperimentStatus, SamplerReport
from common.volume import PreparedVolume


class Experiment:
    """One experiment attached to a cache: its id, its crop settings and the per-epoch calls."""

    warm_timeout_s: float = 600.0
    """How long the first snapshot in a process waits for the cache's first fill."""

    def __init__(self, fingerprint: str, namespace: str, experiment_id: str, settings: ConsumerSettings,
                 num_classes: int, info: dict[str, Any] | None = None, recover_timeout_s: float | None = None,
                 lease_s: float = 10.0) -> None:
        self.fingerprint, self.namespace, self.id = fingerprint, namespace, experiment_id
        self.recover_timeout_s = recover_timeout_s  # set: re-attach with backoff when the cache restarts
        self.settings, self.num_classes, self.info = settings, num_classes, dict(info or {})
        self.lease_s = lease_s  # the cache's cache.lease_s: renewed RENEWALS_PER_LEASE times within it
        self._cache: CacheCalls | None = None
        self._owner_pid: int | None = None  # the process that registered (it alone renews and unregisters)
        self._lease: LeaseKeeper | None = None
        self._data_failure: BaseException | None = None  # a producer failure not yet raised in the training thread
        self._warm = False  # this process has seen the pool's first fill done (see snapshot)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        # a worker's copy never detaches, and checks for itself that the cache has filled
        state.update(_cache=None, _owner_pid=None, _lease=None, _data_failure=None, _warm=False)
        return state

    @property
    def _owner(self) -> bool:
        """This object opened the experiment, in this process (a forked child's copy is not the owner)."""
        return self._owner_pid == os.getpid()

    @property
    def cache(self) -> CacheCalls:
        """The cache (attached on first use, so a copy in a Ray Train worker finds it there).

        With ``recover_timeout_s`` it is a :class:`~cache_service.recovery.ResilientCache`: calls
        re-attach with backoff while the cache restarts, and lost volumes are re-read from a
        fresh snapshot of the same epoch.
        """
        if self._cache is None:
            if self.recover_timeout_s is None:
                self._cache = protocol.attach(self.fingerprint, self.namespace)
            else:
                self._cache = ResilientCache(self.fingerprint, self.namespace, self.recover_timeout_s,
                                             experiment_id=self.id, info=self.info)
        return self._cache

    # ---- attach / detach ----------------------------------------------------------------------
    def open(self) -> "Experiment":
        """Register with the cache and hold a lease from this process (the pool will not rotate away
        from this experiment unseen; if this process dies, the cache detaches it within ``lease_s``)."""
        self._attach()
        self._owner_pid = os.getpid()
        self._lease = LeaseKeeper(self.id, lambda: protocol.heartbeat(self.cache, self.id), self._attach,
                                  self.lease_s / RENEWALS_PER_LEASE).start()
        return self

    def _attach(self) -> None:
        protocol.register(self.cache, self.id, self.info)
        protocol.heartbeat(self.cache, self.id)  # the lease starts now, not at the thread's first round

    def close(self) -> None:
        """Stop renewing and unregister (only the process that opened it does; copies elsewhere do nothing)."""
        if self._owner:
            self._owner_pid = None
            if self._lease is not None:
                self._lease.stop()
                self._lease = None
            protocol.unregister(self.cache, self.id)

    def __enter__(self) -> "Experiment":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- one epoch ----------------------------------------------------------------------------
    def snapshot(self, epoch: int) -> Snapshot:
        """The pool for ``epoch`` (same for every rank) and this experiment's current ratio.

        The first call in a process waits up to ``warm_timeout_s`` for the pool's first fill, so a
        consumer may open its experiment and start its workers while the cache is still filling.
        """
        if not self._warm:
            self.wait_until_ready()
        return protocol.epoch_snapshot(self.cache, self.id, epoch)

    def wait_until_ready(self, progress: bool = False) -> CacheStatus:
        """Block until the pool's first fill is done (up to ``warm_timeout_s``) and return the cache's status.

        Unlike :meth:`SmartCache.wait_until_ready` this waits through the experiment's own handle:
        with ``recover_timeout_s`` a cache that restarts during the fill is waited out like any
        other call, and one that does not come back raises
        :class:`~common.errors.CacheUnavailableError` after ``recover_timeout_s``.
        """
        status = protocol.wait_warm(self.cache, self.warm_timeout_s, progress=progress)
        self._warm = True
        return status

    def batches(self, epoch: int, *, rank: int = 0, world_size: int = 1,
                patch_size: Sequence[int] | None = None, batch_size: int | None = None,
                samples_per_volume: int | None = None, steps: int | None = None,
                device_volumes: DeviceVolumes | None = None) -> CropBatches:
        """This rank's crop batches for ``epoch``: dicts of ``image`` (B, C, *patch) float32,
        ``label`` (B, 1, *patch) uint8 and ``positive`` (B,) bool, B crops as
        :meth:`SmartCache.experiment` counts them. Use ``with`` or iterate to the end.

        Pass the same ``device_volumes`` (a :class:`cache_service.sdk.device.DeviceVolumes` for your
        GPU) every epoch to cut crops on the GPU from volumes uploaded once per pool generation.

        Raises :class:`~common.errors.DataError` naming every volume of this rank's share smaller
        than the patch, and the setting the patch came from.
        """
        settings = self.settings.with_overrides(patch_size=patch_size, batch_size=batch_size,
                                                samples_per_volume=samples_per_volume, steps=steps)
        snap = self.snapshot(epoch)
        fetch = None
        if isinstance(self.cache, ResilientCache):  # survives the death of the volumes' owner
            fetch = self.cache.fetcher(snap, self.id, epoch)
        return protocol.crop_batches(snap, settings, epoch=epoch, rank=rank, world_size=world_size,
                                     fetch=fetch, device_volumes=device_volumes)

    def dataset(self, *, rank: int | None = None, world_size: int | None = None, **overrides: Any) -> CropDataset:
        """An ``IterableDataset`` of MONAI-form items, one list of ``num_samples`` crops each (see
        :class:`~cache_service.sdk.batches.CropDataset`): ``monai.data.ThreadDataLoader(ds, batch_size=2)``."""
        return CropDataset(self, rank=rank, world_size=world_size, **overrides)

    def note_data_failure(self, error: BaseException) -> None:
        """Keep a crop producer's failure for :meth:`finish_epoch` (a loader thread may have dropped it)."""
        self._data_failure = error

    def finish_epoch(self, epoch: int, metrics: dict[str, float] | None = None, *, rank: int = 0) -> bool:
        """Say the epoch is done; only rank 0's call is sent (safe to call on every rank).

        Returns whether the pool rotated: it rotates once every attached experiment has
        trained on the current generation; until then this one repeats the same pool.
        Raises the failure of this epoch's crop producer first, if a loader thread swallowed it.
        """
        failure, self._data_failure = self._data_failure, None
        if failure is not None:
            raise failure
        return rank == 0 and protocol.finish_epoch(self.cache, self.id, epoch, metrics)

    # ---- validation and the adaptive ratio ----------------------------------------------------
    def validation_volumes(self) -> list[PreparedVolume]:
        """The cached validation volumes, as writable copies.

        The object store hands out read-only views of shared memory, on which ``torch.as_tensor``
        warns and in-place transforms fail; validation volumes are few and read once per call.
        """
        snap = protocol.validation_snapshot(self.cache)
        return [ray.get(r).writable_copy() for r in snap.refs]

    def report_validation(self, epoch: int, pred: Any, label: Any) -> SamplerReport:
        """Measure Dice, r_FP, r_FN and publish the next ratio; returns what the cache stored.

        ``pred``/``label``: one case or a batch, or lists of them, as MONAI users hold them: class
        maps ((X, Y, Z), (1, X, Y, Z), (B, 1, X, Y, Z)) or one-hot ((C, X, Y, Z), (B, C, X, Y, Z)),
        torch, numpy or MetaTensor; pred and label may differ in form. Logits or probabilities
        are refused (take the argmax first). Dice is MONAI's, foreground classes only
        (see :mod:`common.scoring`).
        """
        preds, labels = (pred, label) if isinstance(pred, (list, tuple)) else ([pred], [label])
        numbers = protocol.validation_numbers(preds, labels, self.num_classes, self.settings.sampler, self.ratio,
                                              epoch=epoch)
        return protocol.publish_ratio(self.cache, self.id, epoch, numbers)

    @property
    def ratio(self) -> float:
        """The pos/neg ratio the next epoch will crop with."""
        return protocol.current_ratio(self.cache, self.id)

    def status(self) -> ExperimentStatus:
        """This experiment as the cache sees it: epoch, ratio, sampler history, cycle coverage."""
        return protocol.experiment_status(self.cache, self.id)
