"""Where ``SmartCache.connect`` spends its time in a plain process, phase by phase.

One fresh process per run (``--runs``): it imports the SDK the way a user does, then calls
``SmartCache.connect(address=None)`` with the spleen tutorial's chain on the demo data,
which starts a local Ray, creates the cache actor and waits for the fill. The phases are
timed by wrapping the functions ``connect`` calls (the code under test runs unchanged):

  import      ``from cache_service import SmartCache`` (torch, MONAI, Ray, the SDK)
  ray.init    ``join_or_start`` (a new local cluster; joining a running one is cheaper)
  setup       catalog, chain split, pickled prefix, fingerprint (driver only)
  actor       ``get_or_create_cache``: actor process start, its imports and constructor, first ping
  fill        ``wait_until_ready``: every pool and validation volume prepared and cached
  total       process start to connect's return (from the process's own start time)

"setup" is what is left of connect's own time after the three timed calls. The actor phase
is split from the actor's side: when its process started (``/proc/<pid>``) and when its
constructor ended (``now - status().uptime_s``).

  smartcache make-demo-data /tmp/demo8 --cases 8 --size 64
  PYTHONPATH=. python benchmarks/connect_startup.py /tmp/demo8 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PHASES = ("import", "ray.init", "setup", "actor", "fill", "total")


def _process_start(pid: int | str = "self") -> float:
    """Wall-clock time a process started (Linux: /proc), so "total" covers the interpreter's own start."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _one_run(data: str, namespace: str, settings: dict) -> dict[str, float]:
    """The measured process: time each phase of one connect, print the phases as JSON."""
    t0 = time.time()
    from cache_service import SmartCache  # the user's import, timed: this is the phase being measured
    from cache_service import client
    from cache_service.sdk import api
    from monai.transforms import (Compose, CropForegroundd, EnsureChannelFirstd, LoadImaged, Orientationd,
                                  RandCropByPosNegLabeld, ScaleIntensityRanged, Spacingd)

    times = {"import": time.time() - t0}
    t_actor: list[float] = []
    for module, name, phase in ((api, "join_or_start", "ray.init"), (client, "get_or_create_cache", "actor"),
                                (client, "wait_until_ready", "fill")):
        original = getattr(module, name)

        def timed(*a, _f=original, _p=phase, **kw):  # type: ignore[no-untyped-def]
            start = time.time()
            if _p == "actor":
                t_actor.append(start)
            try:
                return _f(*a, **kw)
            finally:
                times[_p] = times.get(_p, 0.0) + time.time() - start
        setattr(module, name, timed)
    keys = ["image", "label"]
    chain = Compose([LoadImaged(keys=keys), EnsureChannelFirstd(keys=keys), Orientationd(keys=keys, axcodes="RAS"),
                     Spacingd(keys=keys, pixdim=(1.5, 1.5, 2.0), mode=("bilinear", "nearest")),
                     ScaleIntensityRanged(keys=["image"], a_min=-57, a_max=164, b_min=0.0, b_max=1.0, clip=True),
                     CropForegroundd(keys=keys, source_key="image"),
                     RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=(16, 16, 16), pos=1, neg=1,
                                            num_samples=4)])
    t_connect = time.time()
    cache = SmartCache.connect(data, transforms=chain, cache_num=6, address=None, namespace=namespace,
                               settings=settings)
    done = time.time()
    times["setup"] = (done - t_connect) - sum(times.get(p, 0.0) for p in ("ray.init", "actor", "fill"))
    times["total"] = done - _process_start()
    status, pid = cache.status(), cache._handle.ping()["pid"]
    times["prep_seconds_spent"] = status.prep_seconds_spent
    # the actor phase from the actor's side: its process's start, and its constructor's end (uptime counts from it)
    times["actor_process_start"] = _process_start(pid) - t_actor[0]
    times["actor_ready"] = (time.time() - status.uptime_s) - t_actor[0]
    cache.stop()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="an MSD-layout folder (smartcache make-demo-data DIR --cases 8 --size 64)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settings", default="{}", help='config sections as JSON, e.g. \'{"cache": {...}}\'')
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        phases = _one_run(args.data, f"startup-{os.getpid()}", json.loads(args.settings))
        print("PHASES " + json.dumps(phases), flush=True)
        return 0
    rows = []
    for _ in range(args.runs):
        child = [sys.executable, __file__, args.data, "--child", "--settings", args.settings]
        done = subprocess.run(child, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"the measured process failed ({done.returncode}):\n{done.stderr[-3000:]}")
        out = done.stdout
        rows.append(json.loads(next(line for line in out.splitlines() if line.startswith("PHASES "))[7:]))
    print(f"load: {os.getloadavg()}  runs: {args.runs}  (median, min-max in s)")
    print("| phase | " + " | ".join(PHASES) + " |\n|---|" + "---|" * len(PHASES))
    cells = [f"{statistics.median(r[p] for r in rows):.2f} ({min(r[p] for r in rows):.2f}-"
             f"{max(r[p] for r in rows):.2f})" for p in PHASES]
    print("| connect | " + " | ".join(cells) + " |")
    for key, what in (("actor_process_start", "actor process started, s after the actor phase began"),
                      ("actor_ready", "actor constructor done, s after the actor phase began"),
                      ("prep_seconds_spent", "preprocessing inside the fill (prep_seconds_spent)")):
        print(f"{what}:", ", ".join(f"{r[key]:.2f}" for r in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
