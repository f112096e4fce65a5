"""Whether a CPU computes bf16 natively, so that bf16 autocast (``training.cpu_bf16``) pays on it.

On a CPU with bf16 instructions (x86 ``avx512_bf16`` or AMX, Arm's ``bf16`` extension) oneDNN
runs the U-Net's convolutions in bf16: on this project's CT profile a training step took 0.24 s
against 0.31 s in fp32 and a sliding-window validation 2.2 s against 3.3 s per volume
(``benchmarks/cpu_bf16.py``; docs/benchmarks.md, "bf16 on the CPU"). Without those
instructions bf16 has no fast kernels: with oneDNN capped at AVX2 the same step took 2.5 s and
the validation 37 s, ten times fp32, so the planner only chooses it where the probe finds them
and a run warns when it is asked for on a CPU without.

Read from ``/proc/cpuinfo`` (Linux); elsewhere the answer is "not known" and nothing is assumed.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BF16_FLAGS", "has_native_bf16", "native_bf16"]

#: /proc/cpuinfo flags of bf16 instructions: x86 AVX-512 BF16 and AMX, Arm's BF16 extension
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})

CPUINFO = Path("/proc/cpuinfo")


def has_native_bf16(flags: frozenset[str]) -> bool:
    """Whether a CPU with these feature flags has bf16 instructions."""
    return bool(flags & BF16_FLAGS)


def _cpu_flags(cpuinfo: str) -> frozenset[str] | None:
    """The first processor's feature flags ("flags" on x86, "Features" on Arm), or None if none are listed."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def native_bf16(cpuinfo: Path = CPUINFO) -> bool | None:
    """This machine's answer: True or False where ``/proc/cpuinfo`` lists the CPU's flags, else None."""
    try:
        flags = _cpu_flags(cpuinfo.read_text())
    except OSError:
        return None
    return None if flags is None else has_native_bf16(flags)
