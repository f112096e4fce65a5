"""A driver that holds one experiment on a shared cache: ``python -m tests.integration.lease_driver ADDR CFG NAME``.

It opens the experiment through the public SDK (which takes the lease and renews it from a
thread), then runs empty epochs (snapshot, then finish) until it is killed, printing one JSON
line per epoch: ``{"epoch", "generation", "rotated", "time"}``. The liveness test SIGKILLs one
such process and watches the other.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import ray

from cache_service.sdk import SmartCache
from common.config import config_from_dict

EPOCH_S = 0.3


def main(address: str, config_file: str, name: str) -> None:
    ray.init(address=address, log_to_driver=False)
    cfg = config_from_dict(json.loads(Path(config_file).read_text()))
    cache = SmartCache.from_config(cfg, wait=True, actor_num_cpus=0.25)
    exp = cache.experiment(name, unique=False).open()
    epoch = 0
    while True:
        snap = exp.snapshot(epoch)
        rotated = exp.finish_epoch(epoch)
        print(json.dumps({"epoch": epoch, "generation": snap.generation, "rotated": rotated, "time": time.time()}),
              flush=True)
        epoch += 1
        time.sleep(EPOCH_S)


if __name__ == "__main__":
    main(*sys.argv[1:4])
