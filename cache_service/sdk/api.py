"""The typed client: connect to (or start) the shared cache, open an experiment, iterate its crops.

    cache = SmartCache.connect("Task09_Spleen/", transforms=my_compose, cache_num=24, replace_rate=0.25)
    with cache.experiment("lr-1e-3", patch_size=(96, 96, 96), batch_size=2) as exp:
        for epoch in range(epochs):
            for batch in exp.batches(epoch, rank=rank, world_size=world):
                ...
            exp.finish_epoch(epoch, rank=rank)
            exp.report_validation(epoch, preds, labels)   # r_FP, r_FN, the next ratio, published

Every call to the cache goes through :mod:`cache_service.sdk.protocol`. An
:class:`Experiment` pickles (fingerprint, namespace, id, settings), so it can be handed to
Ray Train workers in ``train_loop_config``; only the process that opened it renews its lease
(:mod:`cache_service.sdk.lease`) and detaches it.
"""

from __future__ import annotations

import os
import pickle
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import ray
from monai.transforms import Compose

from cache_service import client
from cache_service.cluster import join_or_start
from cache_service.handle import CacheCalls, CacheHandle
from cache_service.recovery import ResilientCache
from cache_service.sdk import protocol
from cache_service.sdk.batches import ConsumerSettings, CropBatches, CropDataset
from cache_service.sdk.device import DeviceVolumes
from cache_service.sdk.lease import RENEWALS_PER_LEASE, LeaseKeeper
from cache_service.snapshot import Snapshot
from cache_service.status import CacheStatus, ExperimentStatus, SamplerReport
from common.catalog import Catalog, fingerprint, load_catalog
from common.chain import UserChain, split_user_chain
from common.config import AugmentConfig, ExperimentConfig, SamplerConfig, config_from_dict
from common.ids import check_experiment_id
from common.preprocess import Preprocessor
from common.scoring import ValidationResult
from common.volume import PreparedVolume


class Experiment:
    """One experiment attached to a cache: its id, its crop settings and the per-epoch calls."""

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
        self._val_refs: tuple[Any, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_cache=None, _owner_pid=None, _lease=None, _val_refs=())  # a worker's copy never detaches
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
        """The pool for ``epoch`` (same for every rank) and this experiment's current ratio."""
        return protocol.epoch_snapshot(self.cache, self.id, epoch)

    def batches(self, epoch: int, *, rank: int = 0, world_size: int = 1,
                patch_size: Sequence[int] | None = None, batch_size: int | None = None,
                samples_per_volume: int | None = None, steps: int | None = None,
                device_volumes: DeviceVolumes | None = None) -> CropBatches:
        """This rank's crop batches for ``epoch``: dicts of ``image`` (B, C, *patch) float32,
        ``label`` (B, 1, *patch) uint8 and ``positive`` (B,) bool. Use ``with`` or iterate to the end.

        Pass the same ``device_volumes`` (a :class:`cache_service.sdk.device.DeviceVolumes` for your
        GPU) every epoch to cut crops on the GPU from volumes uploaded once per pool generation.

        Raises :class:`~common.errors.DataError` if a volume is smaller than ``patch_size``.
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
        """An ``IterableDataset`` of batches (``DataLoader(ds, batch_size=None, pin_memory=True)``)."""
        return CropDataset(self, rank=rank, world_size=world_size, **overrides)

    def finish_epoch(self, epoch: int, metrics: dict[str, float] | None = None, *, rank: int = 0) -> bool:
        """Say the epoch is done; only rank 0's call is sent (safe to call on every rank).

        Returns whether the pool rotated: it rotates once every attached experiment has
        trained on the current generation; until then this one repeats the same pool.
        """
        return rank == 0 and protocol.finish_epoch(self.cache, self.id, epoch, metrics)

    # ---- validation and the adaptive ratio ----------------------------------------------------
    def validation_volumes(self) -> list[PreparedVolume]:
        """The cached validation volumes (read-only views into shared memory; kept readable by this object)."""
        snap = protocol.validation_snapshot(self.cache)
        self._val_refs = snap.refs
        return [ray.get(r) for r in snap.refs]

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

    def publish_validation(self, epoch: int, numbers: ValidationResult) -> SamplerReport:
        """Publish numbers measured elsewhere (the project's validation actor measures its own)."""
        return protocol.publish_ratio(self.cache, self.id, epoch, numbers)

    @property
    def ratio(self) -> float:
        """The pos/neg ratio the next epoch will crop with."""
        return protocol.current_ratio(self.cache, self.id)

    def status(self) -> ExperimentStatus:
        """This experiment as the cache sees it: epoch, ratio, sampler history, cycle coverage."""
        return protocol.experiment_status(self.cache, self.id)


class SmartCache:
    """A connection to the shared cache of one dataset and one deterministic transform prefix."""

    def __init__(self, config: ExperimentConfig, catalog: Catalog, fingerprint: str, handle: CacheHandle,
                 chain: UserChain | None = None) -> None:
        self.config, self.catalog, self.fingerprint, self.chain = config, catalog, fingerprint, chain
        self._handle = handle

    @classmethod
    def connect(cls, dataset: str | Path, transforms: Compose | Sequence[Callable] | None = None, *,
                cache_num: int | None = None, cache_rate: float = 1.0, replace_rate: float = 0.2,
                val_fraction: float = 0.2, address: str | None = "auto", namespace: str = "smartcache",
                byte_budget: int | str = "8GiB", disk_dir: str | None = None, wait: bool = True,
                progress: bool = False, settings: dict[str, Any] | None = None) -> "SmartCache":
        """Attach to (or start) the cache for an MSD-layout ``dataset`` folder and a transform chain.

        ``transforms``: a MONAI ``Compose`` of dictionary transforms over keys ``image`` and
        ``label`` (paths in). It is split at its first random transform: the cache runs the
        prefix, each consumer runs the rest on its crops (see :mod:`common.chain`). ``None``
        uses the project's own chain (orientation, spacing, CT/MRI normalisation, configured
        by ``settings["preprocessing"]``). ``address``: ``"auto"`` joins the running Ray
        cluster, ``None`` starts a local one; ignored when Ray is already initialised.
        ``settings``: any further config sections as a dict (see ``common.config``).
        """
        raw = dict(settings or {})
        raw["data"] = {"dataset_dir": str(dataset), "val_fraction": val_fraction, **raw.get("data", {})}
        raw["cache"] = {"cache_num": cache_num, "cache_rate": cache_rate, "replace_rate": replace_rate,
                        "namespace": namespace, "byte_budget": byte_budget, "disk_dir": disk_dir,
                        **raw.get("cache", {})}
        join_or_start(address)
        return cls.from_config(config_from_dict(raw), transforms=transforms, wait=wait, progress=progress)

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, *, catalog: Catalog | None = None,
                    transforms: Compose | Sequence[Callable] | None = None, wait: bool = True,
                    progress: bool = False, actor_num_cpus: float = client.ACTOR_NUM_CPUS) -> "SmartCache":
        """The same from a full :class:`~common.config.ExperimentConfig` (what ``smartcache train`` uses)."""
        catalog = catalog or load_catalog(cfg.data.dataset_dir, cfg.data)
        chain, prep_bytes = None, None
        if transforms is not None:
            chain = split_user_chain(transforms)
            prep = Preprocessor(cfg.preprocessing, catalog.num_classes, "none", None, chain=chain.prefix)
            prep_bytes = pickle.dumps(prep)
        fp = fingerprint(catalog, cfg.preprocessing, chain.identity if chain else None)
        handle = client.get_or_create_cache(catalog, cfg.cache_side, fp, seed=cfg.training.seed,
                                            actor_num_cpus=actor_num_cpus, preprocessor=prep_bytes)
        cache = cls(cfg, catalog, fp, handle, chain)
        if wait:
            client.wait_until_ready(handle, progress=progress)
        return cache

    def status(self) -> CacheStatus:
        """Pool, budget, rotations, quarantine and every attached experiment (with its cycle coverage)."""
        return self._handle.status()

    def wait_until_ready(self, timeout_s: float = 600.0, progress: bool = False) -> CacheStatus:
        """Block until the pool and the validation volumes are cached (CacheUnavailableError after ``timeout_s``)."""
        return client.wait_until_ready(self._handle, timeout_s=timeout_s, progress=progress)

    def experiment(self, name: str, *, patch_size: Sequence[int] | None = None, batch_size: int | None = None,
                   samples_per_volume: int | None = None, initial_ratio: float | None = None,
                   steps: int | None = None, sampler: SamplerConfig | None = None,
                   augment: AugmentConfig | None = None, seed: int | None = None,
                   info: dict[str, Any] | None = None, unique: bool = True) -> Experiment:
        """A new experiment on this cache (``with`` attaches and detaches it).

        Crop settings default to the config's sampler, then to the chain's
        ``RandCropByPosNegLabeld`` (patch size, samples per volume, pos/neg as the start ratio),
        then to the explicit arguments here. ``unique`` appends a short random suffix to the id.
        """
        cfg = self.config
        sampler = sampler or cfg.sampler
        crop = self.chain.crop if self.chain is not None else None
        if crop is not None:
            lo, hi = sampler.ratio_bounds
            sampler = sampler.replace(patch_size=crop.patch_size, samples_per_volume=crop.samples_per_volume,
                              initial_ratio=min(hi, max(lo, crop.initial_ratio)))
        if initial_ratio is not None:
            sampler = sampler.replace(initial_ratio=initial_ratio)
        settings = ConsumerSettings(sampler=sampler, augment=augment or cfg.augmentation,
                                    batch_size=cfg.training.batch_size,
                                    seed=cfg.training.seed if seed is None else seed,
                                    suffix=self.chain.suffix if self.chain is not None else None)
        settings = settings.with_overrides(patch_size=patch_size, batch_size=batch_size,
                                           samples_per_volume=samples_per_volume, steps=steps)
        experiment_id = check_experiment_id(f"{name}-{uuid.uuid4().hex[:6]}" if unique else name)
        details = {"name": name, "initial_ratio": settings.sampler.initial_ratio,
                   "patch_size": list(settings.sampler.patch_size), **(info or {})}
        return Experiment(self.fingerprint, cfg.cache.namespace, experiment_id, settings, self.catalog.num_classes,
                          details, recover_timeout_s=cfg.cache.recover_timeout_s, lease_s=cfg.cache.lease_s)

    def stop(self) -> None:
        """Stop the cache actor for every experiment attached to it (frees the object store)."""
        client.stop_cache(self._handle)
