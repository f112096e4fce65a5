"""The three arms of the sweep benchmark (benchmarks/sweep_compare.py), and what is sampled while they run.

  shared    ``smartcache sweep``'s own code path (:func:`trainer.sweep.run_sweep`, FIFO): the driver
            fills one cache, every trial is an experiment on it
  monai     what MONAI users run today: Ray Tune with a function trainable per trial that builds its
            own fast-recipe ``CacheDataset`` (benchmarks/monai_fast.py: cached FgBg indices,
            ``copy_cache=False``, ``set_track_meta(False)``, ``ThreadDataLoader``); nothing is shared
  no-cache  the same sweep with ``cache.enabled=false``: each trial's DataLoader workers load and
            preprocess every volume every epoch

Preparation CPU seconds, counted per arm as what that arm spends preparing volumes:
  shared    the cache's ``prep_cpu_seconds``: process CPU time of every preparation task (pool fill,
            rotation replacements, validation volumes), each task measured in its own process
  monai     process CPU time of each trial's process while it builds its CacheDataset and prepares
            its validation volumes (the CacheDataset's fill threads are in that process)
  no-cache  CPU time of the trainers' DataLoader worker processes (children of the Ray workers):
            reaped children as their parent reports them, live ones as sampled every 0.5 s, so a
            lower bound; the validation actor preparing its two volumes in-process is not counted

Memory: every 0.5 s the summed private PSS (``datapath.private_pss``) of the driver and every
process of its own Ray cluster, plus the object store bytes (read every 5 s, counted once, as
benchmarks/datapath.py counts them); the peak of that sum is the arm's "peak memory of the node".
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from datapath import object_store_used, private_pss

SHARED, MONAI, NO_CACHE = "shared", "monai", "no-cache"
SAMPLE_S = 0.5
STORE_EVERY = 10  # samples between object-store readings (the summary call is slow on 2 cores)


@dataclass
class TrialRow:
    """One trial of one arm: its values, when its first step ran (s from the arm's start), its Dice."""

    index: int
    values: dict[str, Any]
    first_step_s: float | None
    best_dice: float | None
    steps: int


@dataclass
class ArmRun:
    """What one arm measured."""

    arm: str
    wall_s: float
    trials: list[TrialRow]
    prep_cpu_s: float | None
    peak_bytes: int = 0
    idle_bytes: int = 0  # the same sum just before the arm started (the bare Ray cluster and the driver)
    store_peak_bytes: int = 0
    load: tuple[float, float] = (0.0, 0.0)


@dataclass
class _Sample:
    pss: int
    loader_cpu: dict[int, float] = field(default_factory=dict)  # Ray worker pid -> its children's CPU seconds


def _cpu(times: Any) -> float:
    return float(times.user + times.system)


GONE = (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError, PermissionError)  # exited while read


def _children_cpu(worker: psutil.Process) -> float:
    """CPU seconds of a Ray worker's child processes: those it has reaped (as it reports them) and live ones."""
    total = 0.0
    for kid in worker.children(recursive=True):
        try:
            total += _cpu(kid.cpu_times())
        except GONE:
            continue
    t = worker.cpu_times()
    return total + t.children_user + t.children_system


def _sample() -> _Sample:
    """Private PSS of this process and its descendants; the CPU of each Ray worker's child processes."""
    me = psutil.Process()
    total, loader = 0, {}
    for p in [me, *me.children(recursive=True)]:
        try:
            total += private_pss(p.pid)
            workers = p.children() if p.name() == "raylet" else []  # Ray's worker processes
        except GONE:
            continue
        for worker in workers:
            try:
                loader[worker.pid] = _children_cpu(worker)
            except GONE:
                continue
    return _Sample(total, loader)


class NodeSampler:
    """A thread sampling the node's memory and the loader workers' CPU while an arm runs (``with``)."""

    def __init__(self) -> None:
        self.idle = _sample().pss
        self.peak = self.idle
        self.store = self.store_peak = max(0, object_store_used())
        self.peak += self.store
        self._loader: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="node-sampler", daemon=True)

    def _take(self, n: int) -> None:
        s = _sample()
        if n % STORE_EVERY == 0:
            self.store = max(0, object_store_used())
            self.store_peak = max(self.store_peak, self.store)
        self.peak = max(self.peak, s.pss + self.store)
        for pid, cpu in s.loader_cpu.items():  # monotone per worker: keep the highest reading
            self._loader[pid] = max(self._loader.get(pid, 0.0), cpu)

    def _run(self) -> None:
        n = 1
        while not self._stop.wait(SAMPLE_S):
            self._take(n)
            n += 1

    @property
    def loader_cpu_s(self) -> float:
        return sum(self._loader.values())

    def __enter__(self) -> "NodeSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._take(0)


def first_steps(trials_dir: Path, names: list[str], t0: float) -> list[tuple[float | None, int]]:
    """(seconds from ``t0`` to each trial's first training step, its steps) from its metrics.jsonl (rank 0)."""
    out = []
    for name in names:
        path = trials_dir / name / "metrics.jsonl"
        rows = [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []
        train = [r for r in rows if r["kind"] == "train" and r.get("rank", 0) == 0]
        firsts = [r["first_batch_at"] for r in train if r.get("first_batch_at") is not None]
        out.append((min(firsts) - t0 if firsts else None, sum(int(r["steps"]) for r in train)))
    return out


def run_sweep_arm(arm: str, base: dict[str, Any], trials: list[dict[str, Any]], data: str, out: Path,
                  concurrent: int) -> ArmRun:
    """Arm shared or no-cache: :func:`trainer.sweep.run_sweep` (FIFO) on a fresh cache namespace."""
    from cache_service.client import stop_caches  # Ray Tune and the trainer: only when the arm runs
    from cache_service.sdk import protocol
    from common.errors import CacheUnavailableError
    from trainer.sweep import SweepOptions, run_sweep
    from trainer.sweep_plan import format_plan, make_plan

    namespace = f"sweep-bench-{uuid.uuid4().hex[:6]}"
    raw = {**base, "cache": {**base.get("cache", {}), "namespace": namespace, "enabled": arm == SHARED}}
    plan = make_plan(f"bench-{arm}", raw, trials, sorted(trials[0]), data)
    print(format_plan(plan), flush=True)
    try:
        with NodeSampler() as node:
            load0, t0 = psutil.getloadavg()[0], time.time()
            outcomes = run_sweep(plan, SweepOptions(out_dir=out, concurrent=concurrent, scheduler="fifo"))
            wall = time.time() - t0
            prep = None
            if arm == SHARED:
                try:
                    prep = protocol.attach(plan.trials[0].fingerprint, namespace).status().prep_cpu_seconds
                except CacheUnavailableError:
                    prep = None  # the cache died before it could say: not measured
    finally:
        stop_caches(namespace)
    prep = node.loader_cpu_s if arm == NO_CACHE else prep
    firsts = first_steps(out / "trials", [t.name for t in plan.trials], t0)
    rows = [TrialRow(o.index, o.values, f, o.best_dice, s) for o, (f, s) in zip(outcomes, firsts)]
    return ArmRun(arm, wall, rows, prep, node.peak, node.idle, node.store_peak, (load0, psutil.getloadavg()[0]))
