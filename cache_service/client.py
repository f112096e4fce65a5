"""Driver-side helpers: find or start the cache for a fingerprint, wait for warm-up, stop caches.

They hand out :class:`~cache_service.handle.CacheHandle` objects, through which every call
to a cache actor goes (typed methods, timeouts, the project's errors).
"""

from __future__ import annotations

import dataclasses
import pickle
import time

import ray
from tqdm.auto import tqdm

from cache_service.actor import ServiceSpec, SmartCacheService
from cache_service.handle import DEFAULT_TIMEOUT_S, CacheCalls, CacheHandle
from cache_service.names import cache_name, is_cache_name
from cache_service.status import CacheStatus
from common.catalog import Catalog
from common.config import CacheSideConfig
from common.config.cache import CACHE_ACTOR_NUM_CPUS
from common.errors import CacheUnavailableError, DataError, PoolFailedError

ACTOR_MAX_CONCURRENCY = 16


def _require_ray(name: str) -> None:
    if not ray.is_initialized():
        raise CacheUnavailableError(name, "Ray is not initialised; connect first (cache_service.cluster.join_or_start)")


def lookup(name: str, namespace: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> CacheHandle:
    """The handle of the cache actor called ``name`` (not called yet: see :func:`attach`)."""
    _require_ray(name)
    try:
        return CacheHandle(ray.get_actor(name, namespace=namespace), name, timeout_s)
    except ValueError as err:
        raise CacheUnavailableError(name, f"no such actor in namespace '{namespace}'") from err


def attach(fingerprint: str, namespace: str = "smartcache", timeout_s: float = DEFAULT_TIMEOUT_S) -> CacheHandle:
    """The running cache for ``fingerprint``, from any driver connected to the cluster (it answered a ping)."""
    handle = lookup(cache_name(fingerprint), namespace, timeout_s)
    handle.ping()
    return handle


def _preprocessor_bytes(catalog: Catalog, cfg: CacheSideConfig, fp: str) -> bytes:
    """Build the preprocessor (CT statistics once, kept under stats_dir) and pickle it.

    A case that cannot be read is left out of the statistics here; the cache quarantines
    it later with the same error, and the statistics are computed from the good cases.
    """
    from common.preprocess import build_preprocessor  # torch + MONAI: only where a cache is created

    stats_dir = cfg.cache.stats_path()
    good = catalog
    for _ in range(len(catalog.train)):
        try:
            # no patch size here: each consumer checks its own patch (a shared cache must not quarantine for one)
            prep = build_preprocessor(good, cfg.preprocessing, None, stats_dir, fp)
            return pickle.dumps(prep)
        except DataError as err:
            left = tuple(r for r in good.train if err.path not in (r.image, r.label))
            if len(left) == len(good.train) or not left:
                raise
            good = dataclasses.replace(good, train=left)
    raise DataError(catalog.root, "no training case could be read for the intensity statistics")


def get_or_create_cache(catalog: Catalog, cfg: CacheSideConfig, fingerprint: str, *, seed: int = 0,
                        actor_num_cpus: float = CACHE_ACTOR_NUM_CPUS, timeout_s: float = 120.0,
                        preprocessor: bytes | None = None) -> CacheHandle:
    """Attach to the cache for ``fingerprint`` or start it (detached, named, in ``cfg.cache.namespace``).

    ``cfg`` is the data side's part of the config (an ``ExperimentConfig`` is one); the actor
    itself gets only its ``cache`` section, the start ratio and ``seed``, the seed of the pool's
    replacement order (the experiment's ``training.seed`` when a run creates the cache).

    ``preprocessor`` (a pickled :class:`~common.preprocess.Preprocessor`) replaces the one
    built from ``cfg.preprocessing``, e.g. for a user's own MONAI prefix; the fingerprint
    must then cover it. Creation races between drivers are settled by Ray's
    ``get_if_exists``: both get the same actor. With ``cache.max_restarts`` Ray runs the
    constructor again, with the same spec, when the actor's process dies (see
    :mod:`cache_service.actor` for what survives).
    """
    name, ns = cache_name(fingerprint), cfg.cache.namespace
    try:
        handle = lookup(name, ns)
        handle.ping(timeout_s)  # a cache still starting may take longer than one ordinary call
        return handle
    except CacheUnavailableError:
        pass
    prep = preprocessor if preprocessor is not None else _preprocessor_bytes(catalog, cfg, fingerprint)
    spec = ServiceSpec(name=name, fingerprint=fingerprint, catalog=catalog, cache=cfg.cache, preprocessor=prep,
                       seed=seed, initial_ratio=cfg.sampler.initial_ratio)
    actor = ray.remote(SmartCacheService).options(
        name=name, namespace=ns, lifetime="detached", get_if_exists=True, num_cpus=actor_num_cpus,
        max_concurrency=ACTOR_MAX_CONCURRENCY, max_restarts=cfg.cache.max_restarts).remote(spec)
    handle = CacheHandle(actor, name)
    handle.ping(timeout_s)
    return handle


def wait_until_ready(handle: CacheCalls, timeout_s: float = 600.0, progress: bool = True,
                     poll_s: float = 0.05) -> CacheStatus:
    """Poll the status until the pool and the validation volumes are cached, with a progress bar.

    A status call is a short read under the actor's lock, so a short ``poll_s`` is cheap there
    and connect returns within 50 ms of the cache being ready (it was up to 250 ms).

    Raises :class:`~common.errors.PoolFailedError` with the first cause as soon as every
    training item is quarantined, rather than returning a "ready" cache with an empty pool.
    """
    deadline = time.monotonic() + timeout_s
    status = handle.status()
    with tqdm(total=status.capacity + status.val_items_total, desc=f"cache {status.fingerprint}",
              unit="vol", disable=not progress) as bar:
        shown = (0, bar.total)  # what the bar last drew (tqdm draws 0/total when it is made)
        while True:
            bad_train = sum(q.split == "train" for q in status.quarantined)
            bad_val = len(status.quarantined) - bad_train
            total = min(status.capacity, status.train_items - bad_train) + status.val_items_total - bad_val
            now = (status.items_cached + status.val_items_cached, total)
            bar.total, bar.n = total, now[0]
            if status.state == "failed":  # nothing will ever be served: say why now, not at the first batch
                raise PoolFailedError(status.name, status.train_items, status.failure)
            if status.state == "ready":
                return status  # closing the bar draws the final state once
            if now != shown:  # redraw on change only: a log or pipe gets one line per step, not one per poll
                bar.refresh()
                shown = now
            if time.monotonic() > deadline:
                raise CacheUnavailableError(status.name, f"not warm after {timeout_s:.0f}s ({bar.n}/{bar.total})")
            time.sleep(poll_s)
            status = handle.status()


def cache_actor_names(namespace: str) -> list[str]:
    """Names of the cache actors alive in ``namespace``, sorted (the API actor does not match)."""
    if not ray.is_initialized():
        raise CacheUnavailableError("smartcache", "Ray is not initialised in this process")
    named = ray.util.list_named_actors(all_namespaces=True)
    return sorted(a["name"] for a in named if a["namespace"] == namespace and is_cache_name(a["name"]))


def stop_caches(namespace: str) -> list[str]:
    """Stop every cache actor in ``namespace``; returns the names stopped."""
    stopped = []
    for name in cache_actor_names(namespace):
        try:
            stop_cache(lookup(name, namespace))
        except CacheUnavailableError:  # exited on its own meanwhile
            continue
        stopped.append(name)
    return stopped


def stop_cache(handle: CacheHandle) -> None:
    """Stop and kill the cache actor (refs it owns die with it); one already dying is killed all the same."""
    try:
        handle.stop()
    except CacheUnavailableError:
        pass
    ray.kill(handle.actor, no_restart=True)
