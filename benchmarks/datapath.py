"""Crop throughput and memory of the SmartCache data path vs MONAI, measured side by side in one run.

Usage (from the repository root, after ``make venv``):

  .venv/bin/python benchmarks/datapath.py                       # BrainDev x16 + 16 demo phantoms
  .venv/bin/python benchmarks/datapath.py --quick               # short run
  .venv/bin/python benchmarks/datapath.py --markdown docs/benchmarks.md   # also write the tables there

Every row uses the same files, the same deterministic chain (``common.preprocess.build_preprocessor``,
also used as the prefix of the MONAI transforms), the same 96^3 positive/negative crops at ratio 1
(one crop per volume draw; MONAI: ``RandCropByPosNegLabeld(pos=1, neg=1, num_samples=1)``), batch 2,
and augmentation off on both sides. Rows:

* ceiling: a bare numpy copy of two random 96^3 image+label crops from in-memory arrays (driver).
* SmartCache: the cache actor holds the volumes once in the object store; K consumer processes
  (Ray actors attached to the same cluster) each iterate a ``CropBatchStream`` (``--copy-threads``
  copy threads, volumes fetched once per stream) over the same epoch snapshot for ``--duration``
  seconds. crops/s is the sum over consumers. One extra row uses a single copy thread.
* The public SDK in a plain process (``benchmarks/datapath_sdk.py``): ``SmartCache.connect`` +
  ``exp.batches``, one consumer, with the project's chain and with a user's MONAI chain (load,
  channel first, RAS, 1 mm, z-score, then ``RandCropByPosNegLabeld``); the cache is built by
  ``connect``. MONAI's fast recipe with that same user chain is its reference.
* The reference, MONAI's fast-training recipe, in K consumer processes: ``CacheDataset`` whose
  cached prefix ends with ``FgBgToIndicesd`` (+ ``EnsureTyped(track_meta=False)``),
  ``copy_cache=False``, ``set_track_meta(False)``, ``RandCropByPosNegLabeld`` with
  ``fg_indices_key``/``bg_indices_key``, read through ``ThreadDataLoader(num_workers=0)``.
* Context, MONAI the slow way: ``CacheDataset`` without cached indices (the crop scans the label)
  + ``DataLoader`` (num_workers 0 in K consumer processes, 1 in the driver), ``SmartCacheDataset``
  + ``DataLoader`` (cache half the cases, replace 20 % per epoch), and plain ``Dataset`` +
  ``DataLoader(num_workers=1)`` (load and preprocess every time).

Timing of a row starts at its first batch (start-up and cache builds are reported apart), after the
machine has gone under 30 % CPU (at most ``--idle-wait`` s, default 30; the reading is shown as
"CPU busy before").

Memory: the summed private PSS (PSS less shared-memory pages, ``/proc/PID/smaps_rollup``) of the
driver and every process of this script's own Ray cluster (raylet, GCS, cache actor, task workers,
consumers) is taken once the K consumers are started and idle, then sampled while they stream and
once after; "data memory" = the highest increase + the object store bytes (the one copy the cache
holds, counted by its bytes rather than by whichever processes happen to map its pages; see
``private_pss``; for MONAI rows the store holds the same cache, which is not charged to MONAI). Each
MONAI consumer process builds its own CacheDataset, so its increase is its private copy.

Targets printed under each dataset: the service's crops/s with one consumer >= 1.8x the fast
recipe's with one consumer, the same for each public-SDK row (the user chain against the fast
recipe with the user chain), and the service's data memory with the most consumers <= 1.2x one copy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MiB = 2 ** 20
DEFAULT_BRAIN = "/work/devdata/BrainDev"
MARK_BEGIN = "<!-- datapath-benchmark:begin -->"
MARK_END = "<!-- datapath-benchmark:end -->"
SERVICE = "SmartCache actor + CropBatchStream"
MONAI_FAST = "MONAI fast recipe: CacheDataset + cached FgBg indices + ThreadDataLoader"
SDK = "public SDK: SmartCache.connect + exp.batches"
MONAI_FAST_USER = MONAI_FAST + " (user chain)"


# ---------------------------------------------------------------- datasets -----------------------------------
def replicate_dataset(src: Path, min_cases: int, out_root: Path) -> Path:
    """An MSD folder with the source's training cases copied until it holds ``min_cases`` (distinct ids)."""
    meta = json.loads((src / "dataset.json").read_text())
    entries = meta["training"]
    if len(entries) >= min_cases:
        return src
    dst = out_root / f"{src.name}x{min_cases}"
    (dst / "imagesTr").mkdir(parents=True, exist_ok=True)
    (dst / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for i in range(min_cases):
        e = entries[i % len(entries)]
        name = Path(e["image"]).name.removesuffix(".nii.gz").removesuffix(".nii")
        new = f"{name}_r{i:02d}.nii.gz"
        for key, sub in (("image", "imagesTr"), ("label", "labelsTr")):
            target = dst / sub / new
            if not target.exists():
                try:
                    os.link((src / e[key]).resolve(), target)  # hard link: a distinct path, no copy
                except OSError:
                    shutil.copyfile((src / e[key]).resolve(), target)
        training.append({"image": f"./imagesTr/{new}", "label": f"./labelsTr/{new}"})
    meta.update(training=training, numTraining=len(training), name=f"{meta.get('name', src.name)}x{min_cases}")
    (dst / "dataset.json").write_text(json.dumps(meta, indent=1))
    return dst


# ---------------------------------------------------------------- measuring ----------------------------------
def drain(batches: Iterable[dict], seconds: float) -> dict[str, float]:
    """Count crops from an iterable of batches for ``seconds`` after its first batch."""
    t_start = time.perf_counter()
    it = iter(batches)
    shape = tuple(next(it)["image"].shape)  # not kept: a held batch would count as the consumer's memory
    t0 = time.perf_counter()
    crops, n_batches = 0, 0
    for batch in it:
        crops += int(batch["image"].shape[0])
        n_batches += 1
        if time.perf_counter() - t0 >= seconds:
            break
    dt = time.perf_counter() - t0
    return {"crops": crops, "seconds": dt, "crops_per_s": crops / dt if dt > 0 else 0.0,
            "first_batch_s": t0 - t_start, "batches": n_batches, "shape": shape}


def cycle_loader(make_epoch: Callable[[int], Iterable[dict]]) -> Iterable[dict]:
    epoch = 0
    while True:
        yield from make_epoch(epoch)
        epoch += 1


def monai_transform(prefix: Sequence[Any], patch: int, samples: int, fast: bool) -> Any:
    """The deterministic ``prefix`` (cached) + MONAI's pos/neg crop; ``fast``: MONAI's fast-training recipe.

    The recipe (MONAI tutorials, acceleration/fast_training_tutorial) ends the cached prefix
    with ``FgBgToIndicesd`` and ``EnsureTyped(track_meta=False)`` and hands the cached indices to
    ``RandCropByPosNegLabeld``, so no crop scans the label. The tutorial also passes
    ``image_key`` to ``FgBgToIndicesd`` (negatives only where the image is > 0); that changes
    which crops are drawn, not how fast, so it is left out: both sides draw negatives from all
    background voxels.
    """
    from monai.transforms import Compose, EnsureTyped, FgBgToIndicesd, RandCropByPosNegLabeld

    keys = ["image", "label"]
    if fast:
        cached = [FgBgToIndicesd(keys="label", fg_postfix="_fg", bg_postfix="_bg"),
                  EnsureTyped(keys=keys, track_meta=False)]
        crop = RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=(patch,) * 3, pos=1, neg=1,
                                      num_samples=samples, fg_indices_key="label_fg", bg_indices_key="label_bg")
    else:
        cached = []
        crop = RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=(patch,) * 3, pos=1, neg=1,
                                      num_samples=samples)
    t = Compose([*prefix, *cached, crop])
    t.set_random_state(seed=0)
    return t


def build_monai_dataset(kind: str, data: list[dict], prefix: Sequence[Any], patch: int, samples: int,
                        smart_cache_num: int) -> tuple[Any, float]:
    """One MONAI dataset and its build time. "fast" is the fast recipe's ``CacheDataset``:
    ``copy_cache=False`` (the crop copies, the cache is never modified) and, once the cache is
    built, ``set_track_meta(False)`` (no MetaTensor bookkeeping in the random transforms)."""
    from monai.data import CacheDataset, Dataset, SmartCacheDataset, set_track_meta

    transform = monai_transform(prefix, patch, samples, fast=kind == "fast")
    t0 = time.perf_counter()
    if kind == "fast":
        ds = CacheDataset(data, transform, cache_rate=1.0, num_workers=1, copy_cache=False, progress=False)
        set_track_meta(False)  # process-wide: this runs in its own consumer process
    elif kind == "cache":
        ds = CacheDataset(data, transform, cache_rate=1.0, num_workers=1, progress=False)
    elif kind == "smart":
        ds = SmartCacheDataset(data, transform, cache_num=smart_cache_num, replace_rate=0.2, num_init_workers=1,
                               num_replace_workers=1, progress=False, shuffle=False)
    elif kind == "plain":
        ds = Dataset(data, transform)
    else:
        raise ValueError(kind)
    return ds, time.perf_counter() - t0


def run_monai(ds: Any, kind: str, batch: int, num_workers: int, seconds: float) -> dict[str, float]:
    """Drain a MONAI loader; the fast recipe reads through ``ThreadDataLoader(num_workers=0)``."""
    from monai.data import DataLoader, ThreadDataLoader

    if kind == "fast":
        loader = ThreadDataLoader(ds, batch_size=batch, shuffle=True, num_workers=0)
    else:
        loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=num_workers)

    def epoch(_: int) -> Iterable[dict]:
        yield from loader
        if kind == "smart":
            ds.update_cache()

    if kind == "smart":
        ds.start()
    try:
        return drain(cycle_loader(epoch), seconds)
    finally:
        if kind == "smart":
            ds.shutdown()


def wait_idle(max_wait_s: float = 30.0, busy_pct: float = 30.0) -> float:
    """Wait (up to ``max_wait_s``) until the whole machine is under ``busy_pct`` % CPU; return the last reading.

    Leftovers of the previous row (a DataLoader worker finishing a volume, a freed cache) or other
    users of the machine would otherwise be measured as part of the next row.
    """
    import psutil

    deadline = time.monotonic() + max_wait_s
    while True:
        pct = psutil.cpu_percent(interval=0.5)
        if pct < busy_pct or time.monotonic() > deadline:
            return pct


def private_pss(pid: int) -> int:
    """PSS of one process without its shared-memory (shmem) pages, from ``/proc/PID/smaps_rollup``.

    The object store is shared memory. Its pages count in the PSS of whichever processes have
    them mapped, and pages that no live process maps (written by a task worker that has exited)
    count nowhere; a consumer that maps them for the first time, a page of index arrays here and
    there, made the summed PSS grow by store pages that the object store bytes already count.
    So shmem is left out of the PSS and the store is counted once, by its bytes.
    """
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key.strip()] = int(value.split()[0]) * 1024
    return fields["Pss"] - fields.get("Pss_Shmem", 0)


def tree_pss() -> tuple[int, int]:
    """(summed private PSS, number of processes) of this process and all its descendants (our own Ray cluster)."""
    import psutil

    me = psutil.Process()
    total, n = 0, 0
    for p in [me, *me.children(recursive=True)]:
        try:
            total += private_pss(p.pid)
            n += 1
        except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return total, n


def peak_tree_pss(wait: Callable[[], Any], interval_s: float = 0.5) -> tuple[Any, int]:
    """Run ``wait()`` (the consumers streaming) while sampling :func:`tree_pss`; its result and the highest sum.

    A consumer's batches in flight exist only while it streams, so the memory is read during the
    run (and once after), not only once the streams have closed.
    """
    peak, stop = [tree_pss()[0]], threading.Event()

    def sample() -> None:
        while not stop.wait(interval_s):
            peak.append(tree_pss()[0])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = wait()
    finally:
        stop.set()
        sampler.join()
    return result, max(*peak, tree_pss()[0])


def object_store_used() -> int:
    """Plasma bytes in use on this cluster, as ``ray memory --stats-only`` reports them."""
    import ray
    from ray._private.internal_api import memory_summary

    text = memory_summary(ray.get_runtime_context().gcs_address, stats_only=True)
    m = re.search(r"Plasma memory usage (\d+(?:\.\d+)?) (MiB|GiB|KiB|B)", text)
    if not m:
        return -1
    return int(float(m.group(1)) * {"B": 1, "KiB": 2 ** 10, "MiB": MiB, "GiB": 2 ** 30}[m.group(2)])


class Consumer:
    """One consumer process (a Ray actor): the service's CropBatchStream or its own MONAI dataset."""

    def __init__(self) -> None:
        import monai.data  # noqa: F401 -- imports paid before the memory baseline
        import torch  # noqa: F401

        import cache_service.client  # noqa: F401
        import cache_service.sdk.stream  # noqa: F401
        self.keep: Any = None

    def pid(self) -> int:
        return os.getpid()

    def service(self, fp: str, namespace: str, experiment: str, sampler: Any, augment: Any, batch: int,
                seconds: float, seed: int, copy_threads: int) -> dict[str, float]:
        import ray

        from cache_service.client import attach
        from cache_service.sdk.stream import CropBatchStream

        handle = attach(fp, namespace)
        handle.register(experiment)
        snap = handle.snapshot(experiment, 0)
        stream = CropBatchStream(snap.refs, ray.get, snap.ratio, sampler, augment, batch, seed=seed,
                                 steps=10 ** 9, copy_threads=copy_threads, keep_fetched=True)
        try:
            out = drain(stream, seconds)
            out["wait_s"] = stream.wait_seconds
        finally:
            stream.close()
        self.keep = (snap, [ray.get(r) for r in snap.refs])  # hold the volumes, as a trainer would
        return out

    def monai(self, kind: str, data: list[dict], prefix: Sequence[Any], patch: int, samples: int, batch: int,
              num_workers: int, seconds: float, smart_cache_num: int) -> dict[str, float]:
        ds, build_s = build_monai_dataset(kind, data, prefix, patch, samples, smart_cache_num)
        out = run_monai(ds, kind, batch, num_workers, seconds)
        out["build_s"] = build_s
        self.keep = ds
        return out


def ceiling(volumes: list[Any], patch: int, batch: int, seconds: float, seed: int = 0) -> dict[str, float]:
    """Bare numpy: copy ``batch`` random in-bounds image+label crops into fresh arrays, nothing else."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def batches() -> Iterable[dict]:
        while True:
            v0 = volumes[0]
            images = np.empty((batch, v0.image.shape[0], patch, patch, patch), np.float32)
            labels = np.empty((batch, v0.label.shape[0], patch, patch, patch), np.uint8)
            for i in range(batch):
                v = volumes[int(rng.integers(len(volumes)))]
                s = [int(rng.integers(0, n - patch + 1)) for n in v.image.shape[1:]]
                sl = (slice(None), *(slice(a, a + patch) for a in s))
                np.copyto(images[i], v.image[sl])
                np.copyto(labels[i], v.label[sl])
            yield {"image": images, "label": labels}

    return drain(batches(), seconds)


def sdk_row(root: Path, chain: str, args: argparse.Namespace, stats_dir: Path) -> dict[str, Any]:
    """One public-SDK row: ``benchmarks/datapath_sdk.py`` as a plain process joined to this cluster."""
    import ray

    cmd = [sys.executable, str(REPO / "benchmarks" / "datapath_sdk.py"), "--address",
           ray.get_runtime_context().gcs_address, "--dataset", str(root), "--chain", chain,
           "--seconds", str(args.duration), "--patch-size", str(args.patch_size), "--batch-size", str(args.batch_size),
           "--idle-wait", str(args.idle_wait), "--stats-dir", str(stats_dir)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


# ---------------------------------------------------------------- one dataset -------------------------------
@dataclasses.dataclass
class Row:
    dataset: str
    system: str
    consumers: int
    crops_per_s: list[float]
    note: str = ""
    mem_bytes: int | None = None  # data memory (see module docstring)
    store_bytes: int | None = None
    busy: list[float] = dataclasses.field(default_factory=list)  # machine CPU % just before each repeat

    @property
    def median(self) -> float:
        return statistics.median(self.crops_per_s) if self.crops_per_s else float("nan")


def bench_dataset(root: Path, args: argparse.Namespace, stats_dir: Path, bar: Any) -> tuple[list[Row], dict]:
    import ray

    from cache_service.client import get_or_create_cache, stop_cache, wait_until_ready
    from common.catalog import fingerprint, load_catalog
    from common.config import config_from_dict
    from common.preprocess import build_preprocessor
    from datapath_sdk import user_prefix

    p = args.patch_size
    cfg = config_from_dict({
        "data": {"val_fraction": 0.0},
        "sampler": {"patch_size": [p, p, p], "samples_per_volume": args.samples_per_volume},
        "augmentation": {"flip_prob": 0.0, "shift_prob": 0.0},
        "cache": {"cache_rate": 1.0, "byte_budget": "16GiB", "stats_dir": str(stats_dir), "idle_timeout_s": 3600,
                  "namespace": f"bench-{uuid.uuid4().hex[:8]}"},
        "training": {"batch_size": args.batch_size},
    })
    catalog = load_catalog(root, cfg.data)
    name = catalog.name
    fp = fingerprint(catalog, cfg.preprocessing)
    prep = build_preprocessor(catalog, cfg.preprocessing, cfg.sampler.patch_size, stats_dir, fp)
    prefix = list(prep.chain.transforms)
    data = [{"image": r.image, "label": r.label} for r in catalog.train]
    smart_num = max(2, len(data) // 2)
    rows: list[Row] = []
    info: dict[str, Any] = {"cases": len(data)}
    remote = ray.remote(num_cpus=0)(Consumer)

    busy: list[float] = []

    def record(row: Row) -> None:
        rows.append(row)
        bar.write(f"{row.dataset} | {row.system} | {row.consumers} | {fmt_rate(row)} crops/s | busy before "
                  f"{max(row.busy, default=float('nan')):.0f} % | load {os.getloadavg()[0]:.1f}")

    def step(what: str) -> None:
        bar.set_postfix_str(f"{name}: {what}")
        busy.clear()

    def idle() -> None:
        busy.append(wait_idle(args.idle_wait))

    def consumers(k: int) -> tuple[list[Any], int]:
        actors = [remote.remote() for _ in range(k)]
        ray.get([a.pid.remote() for a in actors])
        time.sleep(1.0)
        return actors, tree_pss()[0]

    def release(actors: list[Any]) -> None:
        for a in actors:
            ray.kill(a)
        time.sleep(1.0)

    step("building the cache")
    t0 = time.perf_counter()
    handle = get_or_create_cache(catalog, cfg, fp, actor_num_cpus=0.25)
    try:
        status = wait_until_ready(handle, timeout_s=1800, progress=False)
        info["cache_build_s"] = time.perf_counter() - t0
        info["cache_bytes"] = status.bytes_cached
        info["store_bytes"] = store = object_store_used()
        handle.register("bench-driver")
        snap = handle.snapshot("bench-driver")
        volumes = ray.get(list(snap.refs))
        info["shapes"] = sorted({tuple(v.image.shape[1:]) for v in volumes})
        bar.update(1)

        step("numpy ceiling")
        rates = []
        for s in range(args.repeats):
            idle()
            rates.append(ceiling(volumes, p, args.batch_size, args.duration, s)["crops_per_s"])
        record(Row(name, "numpy crop copy (ceiling)", 1, rates, "driver, in-memory arrays", busy=list(busy)))
        bar.update(1)
        del volumes

        def service_row(k: int, threads: int, label: str) -> None:
            step(f"SmartCache x{k}, {threads} copy thread(s)")
            rates, mems = [], []
            for rep in range(args.repeats):
                actors, base = consumers(k)
                idle()
                refs = [a.service.remote(fp, cfg.cache.namespace, f"bench-{k}-{threads}-{rep}-{i}", cfg.sampler,
                                         cfg.augmentation, args.batch_size, args.duration, 1000 * rep + i, threads)
                        for i, a in enumerate(actors)]
                outs, after = peak_tree_pss(lambda: ray.get(refs))
                rates.append(sum(o["crops_per_s"] for o in outs))
                mems.append(after - base)
                release(actors)
            record(Row(name, label, k, rates,
                            f"shared cache, one stream per process, {threads} copy thread(s)"
                            + (", crops/s summed" if k > 1 else ""),
                            store + int(statistics.median(mems)), store, list(busy)))
            bar.update(1)

        for k in args.consumers:
            service_row(k, args.copy_threads, SERVICE)
        if args.copy_threads != 1:
            service_row(1, 1, SERVICE + " (1 copy thread)")

        def monai_rows(kind: str, label: str, prefix: Sequence[Any] = prefix, counts: Sequence[int] = ()) -> None:
            for k in counts or args.monai_consumers:
                step(f"{label} x{k}")
                rates, mems, builds = [], [], []
                for rep in range(args.repeats if k == 1 else 1):
                    actors, base = consumers(k)
                    idle()
                    refs = [a.monai.remote(kind, data, prefix, p, args.samples_per_volume, args.batch_size, 0,
                                           args.duration, smart_num) for a in actors]
                    outs, after = peak_tree_pss(lambda: ray.get(refs))
                    rates.append(sum(o["crops_per_s"] for o in outs))
                    builds.append(max(o["build_s"] for o in outs))
                    mems.append(after - base)
                    release(actors)
                record(Row(name, label, k, rates,
                                f"own cache per process, built in {statistics.median(builds):.0f} s"
                                + (", crops/s summed" if k > 1 else ""),
                                int(statistics.median(mems)), None, list(busy)))
                bar.update(1)

        monai_rows("fast", MONAI_FAST)
        for chain in ("project", "user"):
            step(f"{SDK} ({chain} chain)")
            out = sdk_row(root, chain, args, stats_dir)
            record(Row(name, f"{SDK} ({chain} chain)", 1, [out["crops_per_s"]],
                       f"plain process, cache built by connect in {out['build_s']:.0f} s", busy=[out["busy"]]))
            bar.update(1)
        monai_rows("fast", MONAI_FAST_USER, user_prefix(p, tuple(cfg.preprocessing.spacing)), counts=[1])
        monai_rows("cache", "MONAI CacheDataset, slow way: no cached indices, DataLoader(nw=0)")

        for kind, nw, label in (("cache", 1, "MONAI CacheDataset, slow way, DataLoader(nw=1)"),
                                ("smart", 0, "MONAI SmartCacheDataset + DataLoader(nw=0)"),
                                ("plain", 1, "MONAI Dataset + DataLoader(nw=1)")):
            if kind == "plain" and args.skip_plain:
                continue
            step(label)
            rates, builds = [], []
            for _ in range(args.repeats):
                ds, build_s = build_monai_dataset(kind, data, prefix, p, args.samples_per_volume, smart_num)
                idle()
                rates.append(run_monai(ds, kind, args.batch_size, nw, args.duration)["crops_per_s"])
                builds.append(build_s)
                del ds
            note = {"cache": f"driver, cache built in {statistics.median(builds):.0f} s",
                    "smart": f"driver, {smart_num} of {len(data)} cached, 20 % replaced per epoch",
                    "plain": "driver, loads and preprocesses every crop"}[kind]
            record(Row(name, label, 1, rates, note, busy=list(busy)))
            bar.update(1)
    finally:
        stop_cache(handle)
    return rows, info


# ---------------------------------------------------------------- report ------------------------------------
def machine() -> str:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import monai
    import ray
    import torch
    return (f"{os.cpu_count()} CPU cores ({cpu}), {psutil.virtual_memory().total / 2 ** 30:.0f} GiB RAM, "
            f"no GPU; Python {platform.python_version()}, Ray {ray.__version__}, MONAI {monai.__version__}, "
            f"torch {torch.__version__}")


def fmt_rate(row: Row) -> str:
    r = row.crops_per_s
    if len(r) > 1:
        return f"{row.median:.1f} ({min(r):.1f}-{max(r):.1f})"
    return f"{row.median:.1f}"


def render(rows: list[Row], infos: dict[str, dict], args: argparse.Namespace, elapsed: float) -> str:
    out: list[str] = []
    out.append(f"Machine: {machine()}  ")
    out.append(f"Command: `{' '.join(['python', 'benchmarks/datapath.py', *sys.argv[1:]])}` "
               f"(total {elapsed / 60:.1f} min; {args.duration:g} s per row, {args.repeats} repeat(s), "
               f"patch {args.patch_size}^3, batch {args.batch_size}, ratio 1, augmentation off)  ")
    out.append("Load average (1/5/15 min) at the start: " + ", ".join(f"{x:.1f}" for x in args.load_start)
               + "; at the end: " + ", ".join(f"{x:.1f}" for x in os.getloadavg())
               + f" (on {os.cpu_count()} cores; above that, other processes shared the machine)")
    out.append("")
    for name, info in infos.items():
        dsrows = [r for r in rows if r.dataset == name]
        shapes = ", ".join("x".join(map(str, s)) for s in info["shapes"])
        out.append(f"### {name}: {info['cases']} cases, volumes {shapes} after the chain, "
                   f"cache {info['cache_bytes'] / MiB:.0f} MiB (built in {info['cache_build_s']:.0f} s)")
        out.append("")
        ceil = next((r.median for r in dsrows if r.system.startswith("numpy")), float("nan"))
        fast = {r.consumers: r.median for r in dsrows if r.system == MONAI_FAST}
        fast_user = next((r.median for r in dsrows if r.system == MONAI_FAST_USER), float("nan"))
        out.append("| system | consumers | crops/s | x MONAI fast (same consumers) | / ceiling | CPU busy before "
                   "| notes |")
        out.append("|---|---:|---:|---:|---:|---:|---|")
        for r in dsrows:
            busy = f"{max(r.busy):.0f} %" if r.busy else "-"
            ref = fast_user if r.system.endswith("(user chain)") else fast.get(r.consumers, float("nan"))
            out.append(f"| {r.system} | {r.consumers} | {fmt_rate(r)} | {r.median / ref:.2f}x | "
                       f"{r.median / ceil:.2f} | {busy} | {r.note} |")
        out.append("")
        out.append("| memory | consumers | data memory MiB | object store MiB | consumers' own MiB (peak) "
                   "| x one copy of the cache |")
        out.append("|---|---:|---:|---:|---:|---:|")
        one = info["cache_bytes"]
        for r in dsrows:
            if r.mem_bytes is None:
                continue
            store = f"{r.store_bytes / MiB:.0f}" if r.store_bytes is not None else "-"
            own = (r.mem_bytes - (r.store_bytes or 0)) / MiB
            out.append(f"| {r.system} | {r.consumers} | {r.mem_bytes / MiB:.0f} | {store} | {own:.0f} "
                       f"| {r.mem_bytes / one:.2f} |")
        out.append("")
        svc1 = next((r for r in dsrows if r.system == SERVICE and r.consumers == 1), None)
        svc_max = max((r for r in dsrows if r.system == SERVICE), key=lambda r: r.consumers, default=None)
        checks = []
        if svc1 is not None and 1 in fast:
            checks.append(("crops/s per consumer >= 1.8x MONAI fast recipe", svc1.median >= 1.8 * fast[1],
                           f"{svc1.median:.0f} vs {fast[1]:.0f} crops/s = {svc1.median / fast[1]:.2f}x"))
        for chain, ref in (("project", fast.get(1, float("nan"))), ("user", fast_user)):
            sdk = next((r for r in dsrows if r.system == f"{SDK} ({chain} chain)"), None)
            if sdk is not None:
                versus = "MONAI fast recipe" + (" with the same user chain" if chain == "user" else "")
                checks.append((f"public SDK ({chain} chain) per consumer >= 1.8x {versus}", sdk.median >= 1.8 * ref,
                               f"{sdk.median:.0f} vs {ref:.0f} crops/s = {sdk.median / ref:.2f}x"))
        if svc_max is not None and svc_max.mem_bytes is not None:
            checks.append((f"memory with {svc_max.consumers} consumers <= 1.2x one copy",
                           svc_max.mem_bytes <= 1.2 * one, f"{svc_max.mem_bytes / one:.3f}x"))
        out.append("Targets: " + "; ".join(f"{what}: **{'met' if ok else 'MISSED'}** ({val})"
                                           for what, ok, val in checks))
        out.append("")
    return "\n".join(out)


def write_markdown(path: Path, text: str) -> None:
    section = f"{MARK_BEGIN}\n{text}\n{MARK_END}\n"
    if path.is_file():
        old = path.read_text()
        if MARK_BEGIN in old and MARK_END in old:
            head, rest = old.split(MARK_BEGIN, 1)
            tail = rest.split(MARK_END, 1)[1].lstrip("\n")
            path.write_text(head + section + tail)
            return
        path.write_text(old.rstrip("\n") + "\n\n" + section)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Benchmarks\n\n" + section)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="*", help=f"MSD dataset folders (default: {DEFAULT_BRAIN} if present)")
    ap.add_argument("--min-cases", type=int, default=16,
                    help="copy a dataset's cases (distinct ids) until it has this many (default 16)")
    ap.add_argument("--demo-cases", type=int, default=16, help="demo phantom cases to generate; 0 = none")
    ap.add_argument("--demo-size", type=int, default=128, help="demo phantom edge in voxels (default 128)")
    ap.add_argument("--repeats", type=int, default=1, help="repeats per throughput row; the median is shown")
    ap.add_argument("--duration", type=float, default=6.0, help="seconds measured per row (default 6)")
    ap.add_argument("--patch-size", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--samples-per-volume", type=int, default=1,
                    help="crops per volume draw (MONAI num_samples; CropBatchStream samples_per_volume)")
    ap.add_argument("--consumers", default="1,2,4", help="SmartCache/MONAI consumer process counts (default 1,2,4)")
    ap.add_argument("--monai-consumers", default=None,
                    help="consumer process counts for the per-process MONAI CacheDataset rows (default: --consumers)")
    ap.add_argument("--copy-threads", type=int, default=2,
                    help="CropBatchStream copy threads per consumer (default 2; a 1-thread row is added as context)")
    ap.add_argument("--idle-wait", type=float, default=30.0,
                    help="seconds a row waits at most for the machine to go under 30 %% CPU (default 30)")
    ap.add_argument("--skip-plain", action="store_true", help="leave out the plain MONAI Dataset row")
    ap.add_argument("--quick", action="store_true",
                    help="short run (a few minutes on an idle machine): 1.5 s rows, 4 demo cases of 128^3, BrainDev x2, "
                         "SmartCache consumers 1,2, MONAI consumers 1")
    ap.add_argument("--markdown", type=Path, default=None,
                    help="also write the tables into this file, between benchmark markers (e.g. docs/benchmarks.md)")
    ap.add_argument("--work-dir", type=Path, default=None, help="where replicated/demo data go (default: a temp dir)")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.repeats, args.min_cases = 1.5, 1, 2
        args.demo_cases, args.demo_size, args.consumers, args.monai_consumers = 4, 128, "1,2", "1"
    args.consumers = [int(k) for k in str(args.consumers).split(",") if k]
    args.monai_consumers = ([int(k) for k in str(args.monai_consumers).split(",") if k]
                            if args.monai_consumers is not None else list(args.consumers))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import ray
    from tqdm.auto import tqdm

    from common.demo_data import make_demo_data

    start = time.perf_counter()
    args.load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="datapath-bench-")) if args.work_dir is None else args.work_dir
    tmp.mkdir(parents=True, exist_ok=True)
    sources = [Path(d) for d in args.datasets] or ([Path(DEFAULT_BRAIN)] if Path(DEFAULT_BRAIN).is_dir() else [])
    roots = [replicate_dataset(s.resolve(), args.min_cases, tmp) for s in sources]
    if args.demo_cases > 0:
        roots.append(make_demo_data(tmp / "demo", cases=args.demo_cases, size=args.demo_size, seed=0))
    per_ds = (5 + len(args.consumers) + (args.copy_threads != 1) + 2 * len(args.monai_consumers)
              + (2 if args.skip_plain else 3))
    # address="local": a cluster of its own, never one that `ray start` left running on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    rows: list[Row] = []
    infos: dict[str, dict] = {}
    try:
        with tqdm(total=per_ds * len(roots), desc="datapath benchmark", unit="row") as bar:
            for root in roots:
                ds_rows, info = bench_dataset(root, args, tmp / "stats", bar)
                rows += ds_rows
                infos[ds_rows[0].dataset] = info
    finally:
        ray.shutdown()
        if args.work_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    raw = Path(tempfile.gettempdir()) / "datapath-benchmark-rows.json"
    raw.write_text(json.dumps({"rows": [dataclasses.asdict(r) for r in rows], "infos": infos}, default=str))
    text = render(rows, infos, args, time.perf_counter() - start)
    print("\n" + text)
    if args.markdown is not None:
        write_markdown(args.markdown, text)
        print(f"\nwrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
