"""A description of the cluster a run will use: what the planner's limits are read from.

The hardware probe (``trainer.plan_inputs.probe_machine``) fills it from Ray and torch; tests and
``smartcache plan --machine`` describe a machine instead, so the rules can be checked on a
GPU node without having one.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.config import parse_bytes
from common.errors import ConfigError


@dataclass(frozen=True)
class NodeSpec:
    """One node: CPUs, RAM, Ray object store, and its GPUs (all of one kind)."""

    cpus: float
    memory_bytes: int
    object_store_bytes: int
    gpus: int = 0
    gpu_memory_bytes: int = 0  # per GPU
    gpu_name: str = ""
    cpu_bf16: bool | None = None  # the CPU has bf16 instructions (common.cpu_features); None: not known


@dataclass(frozen=True)
class Machine:
    """The cluster: its nodes. The planner sizes per-node things (pool) by the smallest node."""

    nodes: tuple[NodeSpec, ...]

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ConfigError("machine.nodes", [], "at least one node with CPUs")

    @property
    def total_cpus(self) -> float:
        return sum(n.cpus for n in self.nodes)

    @property
    def total_gpus(self) -> int:
        return sum(n.gpus for n in self.nodes)

    @property
    def has_gpu(self) -> bool:
        return self.total_gpus > 0

    @property
    def gpu_memory_bytes(self) -> int:
        """Memory of the smallest GPU (every DDP rank gets the same patch and batch)."""
        return min((n.gpu_memory_bytes for n in self.nodes if n.gpus), default=0)

    @property
    def cpu_bf16(self) -> bool | None:
        """Whether every node's CPU computes bf16 natively (None when any node's answer is not known)."""
        answers = {n.cpu_bf16 for n in self.nodes}
        return None if None in answers else all(answers)

    @property
    def object_store_bytes(self) -> int:
        """Object store of the smallest node: every node that trains holds one copy of the pool."""
        return min(n.object_store_bytes for n in self.nodes)

    def describe(self) -> str:
        """One line per kind of node, for the plan's header."""
        parts = []
        for n in self.nodes:
            gpu = f", {n.gpus} x {n.gpu_name or 'GPU'} {n.gpu_memory_bytes / 2**30:.0f} GiB" if n.gpus else ""
            bf16 = " (bf16)" if n.cpu_bf16 else ""
            parts.append(f"{n.cpus:g} CPUs{bf16}, {n.memory_bytes / 2**30:.0f} GiB RAM, "
                         f"{n.object_store_bytes / 2**30:.1f} GiB object store{gpu}")
        return f"{len(self.nodes)} node(s): " + "; ".join(sorted(set(parts)))


def described_machine(text: str) -> Machine:
    """Parse ``"NODESxCPUS[:GPUSxGPU_MEM]"`` (e.g. ``"1x64:8x80GiB"``, ``"1x2"``), a machine without probing.

    Memory is taken as 4 GiB per CPU and the object store as 30 % of it (Ray's default share).
    """
    head, _, gpu = text.partition(":")
    try:
        nodes_s, cpus_s = head.lower().split("x")
        nodes, cpus = int(nodes_s), float(cpus_s)
        gpus, gpu_mem = 0, 0
        if gpu:
            gpus_s, mem_s = gpu.lower().split("x", 1)
            gpus, gpu_mem = int(gpus_s), parse_bytes(mem_s)
    except ValueError as err:
        raise ConfigError("--machine", text, "NODESxCPUS or NODESxCPUS:GPUSxGPU_MEMORY, e.g. 1x2 or "
                                             "1x64:8x80GiB") from err
    memory = int(cpus * 4 * 2**30)
    node = NodeSpec(cpus=cpus, memory_bytes=memory, object_store_bytes=int(memory * 0.3), gpus=gpus,
                    gpu_memory_bytes=gpu_mem, gpu_name="described GPU" if gpus else "")
    return Machine(tuple(node for _ in range(nodes)))
