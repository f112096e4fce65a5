"""The planner's two inputs from a live cluster: the dataset fingerprint and the hardware probe.

The fingerprint is computed by one Ray task per case (in parallel over the cluster's CPUs)
and stored in the cache's statistics folder, keyed by the files' identities, so a second plan
reads it back. The probe reads CPUs, memory and object store per node from ``ray.nodes()``,
whether the node's CPU has bf16 instructions from a task placed there (no CPU reserved), and, on
a node with GPUs, their name and memory from torch in a task placed there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from common.catalog import Catalog, fingerprint
from common.config import PreprocessConfig
from common.cpu_features import native_bf16
from common.planning.fingerprint import DatasetFingerprint, case_statistics, load_fingerprint, save_fingerprint
from common.planning.machine import Machine, NodeSpec

#: cases whose preparation is timed (the cost of one case; timing all would double the fingerprint's work)
TIMED_CASES = 2
#: the key's stand-in for a chain: the fingerprint depends on the files, not on any preprocessing
FINGERPRINT_KEY_CHAIN = "dataset-fingerprint-v1"


def dataset_key(catalog: Catalog) -> str:
    """Names the stored fingerprint: the same hash as the cache's, over the files and labels only."""
    return fingerprint(catalog, PreprocessConfig(), FINGERPRINT_KEY_CHAIN)


def dataset_fingerprint(catalog: Catalog, stats_dir: Path, task_num_cpus: float = 0.5,
                        refresh: bool = False) -> DatasetFingerprint:
    """The stored fingerprint of these files, or compute it with one Ray task per case and store it."""
    key = dataset_key(catalog)
    stored = None if refresh else load_fingerprint(stats_dir, key)
    if stored is not None:
        return stored
    task = ray.remote(num_cpus=task_num_cpus)(case_statistics)
    records = list(catalog.train + catalog.val)
    refs = [task.remote(rec, catalog.num_classes, i < TIMED_CASES) for i, rec in enumerate(records)]
    fp = DatasetFingerprint(catalog.name, catalog.modality, catalog.labels, len(catalog.train), tuple(ray.get(refs)))
    save_fingerprint(fp, stats_dir, key)
    return fp


def _gpu_info() -> tuple[str, int]:
    """(name, bytes) of this node's first GPU: runs inside a task on a GPU node."""
    import torch  # only the probe task on a GPU node needs torch

    props = torch.cuda.get_device_properties(0)
    return str(props.name), int(props.total_memory)


def _node(raw: dict[str, Any]) -> NodeSpec:
    res = raw.get("Resources", {})
    gpus = int(res.get("GPU", 0))
    name, mem = "", 0
    here = NodeAffinitySchedulingStrategy(node_id=raw["NodeID"], soft=False)
    if gpus:
        name, mem = ray.get(ray.remote(num_gpus=1, num_cpus=0, scheduling_strategy=here)(_gpu_info).remote())
    bf16 = ray.get(ray.remote(num_cpus=0, scheduling_strategy=here)(native_bf16).remote())
    return NodeSpec(cpus=float(res.get("CPU", 0)), memory_bytes=int(res.get("memory", 0)),
                    object_store_bytes=int(res.get("object_store_memory", 0)), gpus=gpus,
                    gpu_memory_bytes=mem, gpu_name=name, cpu_bf16=bf16)


def probe_machine() -> Machine:
    """The connected cluster's alive nodes (the driver's Ray must be initialised)."""
    return Machine(tuple(_node(n) for n in ray.nodes() if n.get("Alive")))
