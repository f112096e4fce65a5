"""Host-to-device copies that overlap with compute: reused (pinned) staging buffers and a side stream.

A plain ``batch["image"].to("cuda", non_blocking=True)`` from pageable memory is neither
asynchronous nor cheap: CUDA first copies into a pinned bounce buffer, synchronously. Here
each batch is written into one of a few page-locked buffers allocated once and reused, and
the device copy is issued on a separate CUDA stream as soon as the batch is produced, so it
runs while the GPU is still busy with the previous step. The compute stream waits for the
copy's event (a GPU-side wait: the host never blocks), and a buffer is only written again
once the copy that read it has finished.

The same code runs with ``device="cpu"`` (no streams, no pinning) so the ring-buffer logic is
tested on machines without a GPU; there staging is off by default because a CPU "device"
can use the producer's tensors as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

import torch

Batch = Mapping[str, torch.Tensor]

__all__ = ["DeviceStager", "prefetch_to_device"]


@dataclass
class _Slot:
    """One set of host buffers (one per batch key) and the event of the last copy that read them."""

    buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    copied: Any = None  # torch.cuda.Event on CUDA; None when nothing is in flight

    def buffer(self, key: str, like: torch.Tensor, pin: bool) -> torch.Tensor:
        """The slot's buffer for ``key``, (re)allocated only when the shape or dtype changes."""
        buf = self.buffers.get(key)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
            buf = torch.empty(like.shape, dtype=like.dtype, pin_memory=pin)
            self.buffers[key] = buf
        return buf


class DeviceStager:
    """Moves host batches to ``device`` through ``slots`` reused staging buffers.

    ``stage(batch)`` starts the copy and returns the device batch at once; the tensors are
    safe to use on the current stream (it waits for the copy on the GPU). Keep fewer than
    ``slots`` staged batches alive at a time on CPU, where the staged tensors *are* the
    buffers; on CUDA the device tensors are fresh allocations and only the host side is reused.
    """

    def __init__(self, device: torch.device | str, slots: int = 3, staging: bool | None = None,
                 keys: tuple[str, ...] = ("image", "label")) -> None:
        if slots < 2:
            raise ValueError(f"slots must be >= 2 (one being read while the next is written), got {slots}")
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.staging = self.cuda if staging is None else staging
        self.keys = keys  # what goes to the device; other entries (crop flags) stay on the host
        self._slots = [_Slot() for _ in range(slots)]
        self._next = 0
        self._stream = torch.cuda.Stream(device=self.device) if self.cuda else None
        self.allocations = 0  # host buffers allocated so far: stays at slots x keys once shapes settle

    @property
    def slots(self) -> int:
        return len(self._slots)

    def stage(self, batch: Batch) -> dict[str, torch.Tensor]:
        moved = {k: v for k, v in batch.items() if k in self.keys}
        kept = {k: v for k, v in batch.items() if k not in self.keys}
        if not self.staging:
            return {**{k: v.to(self.device, non_blocking=True) for k, v in moved.items()}, **kept}
        slot = self._slots[self._next]
        self._next = (self._next + 1) % len(self._slots)
        if slot.copied is not None:
            slot.copied.synchronize()  # the copy that last read this slot is done (long since, normally)
        host = {}
        for key, value in moved.items():
            before = slot.buffers.get(key)
            buf = slot.buffer(key, value, pin=self.cuda)
            self.allocations += buf is not before
            buf.copy_(value)
            host[key] = buf
        if not self.cuda:
            return {**host, **kept}
        return {**self._copy_on_side_stream(slot, host), **kept}

    def _copy_on_side_stream(self, slot: _Slot, host: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        assert self._stream is not None
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._stream):
            out = {k: v.to(self.device, non_blocking=True) for k, v in host.items()}
            slot.copied = torch.cuda.Event()
            slot.copied.record(self._stream)
        compute.wait_event(slot.copied)  # GPU-side wait; the host goes on
        for tensor in out.values():
            tensor.record_stream(compute)  # allocated on the side stream, freed after compute used it
        return out


def prefetch_to_device(batches: Iterable[Batch], stager: DeviceStager, depth: int = 1) -> Iterator[dict[str, Any]]:
    """Yield device batches with the copies of the next ``depth`` batches already issued.

    While the caller trains on batch k, batch k+1 is being copied. The batch in use and the
    ``depth`` batches ahead each hold a slot, so ``depth <= slots - 1`` when staging is on.
    """
    if stager.staging and depth > stager.slots - 1:
        raise ValueError(f"depth {depth} needs at least {depth + 1} staging slots, the stager has {stager.slots}")
    pending: list[dict[str, Any]] = []
    for batch in batches:
        pending.append(stager.stage(batch))
        if len(pending) > depth:
            yield pending.pop(0)
    yield from pending
