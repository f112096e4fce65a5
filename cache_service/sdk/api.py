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

import pickle
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from monai.transforms import Compose

from cache_service import client
from cache_service.cluster import join_or_start
from cache_service.handle import CacheHandle
from cache_service.sdk.batches import ConsumerSettings
from cache_service.sdk.experiment import Experiment
from cache_service.sdk.mismatch import warn_if_different
from cache_service.status import CacheStatus
from common.catalog import Catalog, fingerprint, load_catalog
from common.chain import UserChain, split_user_chain
from common.config import AugmentConfig, ExperimentConfig, SamplerConfig, config_from_dict
from common.config.cache import CACHE_ACTOR_NUM_CPUS
from common.ids import check_experiment_id
from common.patch_fit import require_patch_fits
from common.preprocess import Preprocessor

__all__ = ["Experiment", "SmartCache"]


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
                byte_budget: int | str | None = None, disk_dir: str | None = None, wait: bool = True,
                progress: bool = False, settings: dict[str, Any] | None = None) -> "SmartCache":
        """Attach to (or start) the cache for an MSD-layout ``dataset`` folder and a transform chain.

        ``transforms``: a MONAI ``Compose`` of dictionary transforms over keys ``image`` and
        ``label`` (paths in). It is split at its first random transform: the cache runs the
        prefix, each consumer runs the rest on its crops (see :mod:`common.chain`). ``None``
        uses the project's own chain (orientation, spacing, CT/MRI normalisation, configured
        by ``settings["preprocessing"]``). ``address``: ``"auto"`` joins the running Ray
        cluster, ``None`` starts a local one; ignored when Ray is already initialised.
        ``byte_budget``: ``None`` is the config's default (8 GiB, lowered quietly to what the
        object store holds); a value you set is reported when the store cannot hold it.
        ``settings``: any further config sections as a dict (see ``common.config``).

        A cache already running for the same dataset and prefix is joined as it is: a
        :class:`~cache_service.sdk.mismatch.CacheSettingsWarning` names each of your settings
        that it does not share (see :mod:`cache_service.sdk.mismatch` for the rule).

        A patch known now (the chain's ``RandCropByPosNegLabeld`` ``spatial_size``, or
        ``settings["sampler"]["patch_size"]``) is checked after the fill against every training
        volume prepared so far: one smaller than the patch raises a
        :class:`~common.errors.DataError` naming each such case and its shape after the chain.
        """
        raw = dict(settings or {})
        raw["data"] = {"dataset_dir": str(dataset), "val_fraction": val_fraction, **raw.get("data", {})}
        raw["cache"] = {"cache_num": cache_num, "cache_rate": cache_rate, "replace_rate": replace_rate,
                        "namespace": namespace, "disk_dir": disk_dir,
                        **({} if byte_budget is None else {"byte_budget": byte_budget}), **raw.get("cache", {})}
        join_or_start(address)
        return cls.from_config(config_from_dict(raw), transforms=transforms, wait=wait, progress=progress)

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, *, catalog: Catalog | None = None,
                    transforms: Compose | Sequence[Callable] | None = None, wait: bool = True,
                    progress: bool = False, actor_num_cpus: float = CACHE_ACTOR_NUM_CPUS) -> "SmartCache":
        """The same from a full :class:`~common.config.ExperimentConfig` (what ``smartcache train`` uses)."""
        catalog = catalog or load_catalog(cfg.data.dataset_dir, cfg.data)
        chain, prep_bytes = None, None
        if transforms is not None:
            chain = split_user_chain(transforms)
            if chain.crop is None:
                warnings.warn(f"the transform chain has no RandCropByPosNegLabeld, so the service cuts "
                              f"sampler.patch_size {tuple(cfg.sampler.patch_size)} crops; add one to the chain "
                              "or pass patch_size= to experiment()", UserWarning, stacklevel=3)
            prep = Preprocessor(cfg.preprocessing, catalog.num_classes, "none", None, chain=chain.prefix)
            prep_bytes = pickle.dumps(prep)
        fp = fingerprint(catalog, cfg.preprocessing, chain.identity if chain else None)
        handle = client.get_or_create_cache(catalog, cfg.cache_side, fp, seed=cfg.training.seed,
                                            actor_num_cpus=actor_num_cpus, preprocessor=prep_bytes)
        cache = cls(cfg, catalog, fp, handle, chain)
        warn_if_different(cfg.cache, handle.status())
        if wait:
            status = client.wait_until_ready(handle, progress=progress)
            known = cache._patch_known_at_connect()
            if known is not None:
                cache._require_patch_fits(*known, status)
        return cache

    def _patch_known_at_connect(self) -> tuple[tuple[int, ...], str] | None:
        """(patch, the setting it came from) when connect already knows it: the chain's crop or the config's."""
        if self.chain is not None and self.chain.crop is not None:
            return self.chain.crop.patch_size, self.chain.crop.patch_parameter
        if "patch_size" in self.config.sampler.model_fields_set:
            return tuple(self.config.sampler.patch_size), "sampler.patch_size"
        return None

    def _require_patch_fits(self, patch_size: Sequence[int], parameter: str, status: CacheStatus) -> None:
        """Refuse a patch larger than a training volume the cache has prepared, naming every such case.

        Only prepared volumes have a shape after the chain: after the fill that is the pool's
        ``cache_num`` (all N when the pool holds every case) plus any replacements ready, and
        the error says how many were not checked yet; each batch checks the volumes it
        fetches, so one prepared later is still caught (:mod:`cache_service.sdk.batches`).
        """
        failed = sum(q.split == "train" for q in status.quarantined)
        require_patch_fits(status.train_shapes, patch_size, parameter,
                           files={r.item_id: r.image for r in self.catalog.train},
                           unchecked=max(0, status.train_items - failed - len(status.train_shapes)))

    def check_patch(self, patch_size: Sequence[int], parameter: str = "patch_size",
                    status: CacheStatus | None = None) -> None:
        """Raise :class:`~common.errors.DataError` naming every prepared training volume smaller than
        ``patch_size`` and the setting it came from (``parameter``). After the fill this covers the
        whole pool: call it when an experiment was opened before the fill, whose check saw fewer volumes.
        Pass the ``status`` you already hold (``wait_until_ready``'s) to spare asking the cache again."""
        self._require_patch_fits(patch_size, parameter, status if status is not None else self.status())

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

        With a chain's crop, ``batch_size`` counts volumes as MONAI's loaders do: each gives
        ``num_samples`` crops, so ``batch_size=2`` with ``num_samples=4`` makes batches of 8 crops
        (the tutorials' step). Without one (the project's chain, a config file) it counts crops.

        Raises :class:`~common.errors.DataError` when a training volume the cache has prepared is
        smaller than a patch the user set, naming every such case and the setting the patch came
        from (``patch_size=``, the chain's ``spatial_size`` or ``sampler.patch_size``); the built-in
        default patch is checked when batches are made, so an experiment that only reads snapshots
        is not refused over a crop size it never uses.
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
                                    patch_parameter=crop.patch_parameter if crop else "sampler.patch_size",
                                    batch_counts_volumes=crop is not None,
                                    seed=cfg.training.seed if seed is None else seed,
                                    suffix=self.chain.suffix if self.chain is not None else None)
        settings = settings.with_overrides(patch_size=patch_size, batch_size=batch_size,
                                           samples_per_volume=samples_per_volume, steps=steps)
        experiment_id = check_experiment_id(f"{name}-{uuid.uuid4().hex[:6]}" if unique else name)
        if patch_size is not None or crop is not None or "patch_size" in sampler.model_fields_set:
            # a patch the user chose; the built-in default is checked per batch, for those that ask for crops
            self._require_patch_fits(settings.sampler.patch_size, settings.patch_parameter, self.status())
        details = {"name": name, "initial_ratio": settings.sampler.initial_ratio,
                   "patch_size": list(settings.sampler.patch_size), **(info or {})}
        return Experiment(self.fingerprint, cfg.cache.namespace, experiment_id, settings, self.catalog.num_classes,
                          details, recover_timeout_s=cfg.cache.recover_timeout_s, lease_s=cfg.cache.lease_s)

    def stop(self) -> None:
        """Stop the cache actor for every experiment attached to it (frees the object store)."""
        client.stop_cache(self._handle)
