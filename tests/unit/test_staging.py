"""The staging-buffer path of host-to-device copies, run with device "cpu" (the CUDA tests run it on a GPU)."""

from __future__ import annotations

import pytest
import torch

from trainer.staging import DeviceStager, prefetch_to_device

CUDA = torch.cuda.is_available()


def _batches(n: int, shape: tuple[int, ...] = (2, 1, 4, 4, 4)) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(shape, generator=g), "label": torch.randint(0, 3, shape, generator=g,
                                                                            dtype=torch.uint8),
             "positive": torch.tensor([True, False])} for _ in range(n)]


def test_buffers_are_reused_once_shapes_settle() -> None:
    stager = DeviceStager("cpu", slots=3, staging=True)
    ptrs = set()
    for batch in _batches(10):
        out = stager.stage(batch)
        ptrs.add(out["image"].data_ptr())
    assert len(ptrs) == 3  # three slots, cycled
    assert stager.allocations == 3 * 2  # image and label per slot, allocated once


def test_a_new_shape_reallocates_only_that_slot() -> None:
    stager = DeviceStager("cpu", slots=2, staging=True)
    for batch in _batches(4):
        stager.stage(batch)
    stager.stage(_batches(1, shape=(1, 1, 4, 4, 4))[0])  # a short last batch
    assert stager.allocations == 2 * 2 + 2


def test_prefetch_yields_every_batch_in_order_with_the_right_values() -> None:
    batches = _batches(7)
    stager = DeviceStager("cpu", slots=2, staging=True)
    seen = []
    for got, want in zip(prefetch_to_device(batches, stager, depth=1), batches, strict=True):
        # compare while the batch is "in use": the buffer must not have been overwritten by the prefetch
        assert torch.equal(got["image"], want["image"]) and torch.equal(got["label"], want["label"])
        seen.append(got["image"].sum().item())
    assert len(seen) == 7


def test_flags_stay_on_the_host_and_unstaged_path_moves_only_tensors_for_the_device() -> None:
    batch = _batches(1)[0]
    out = DeviceStager("cpu", staging=False).stage(batch)
    assert out["positive"] is batch["positive"] and torch.equal(out["image"], batch["image"])
    assert DeviceStager("cpu").staging is False  # off by default where the device is the host


def test_prefetch_deeper_than_the_slots_is_refused() -> None:
    with pytest.raises(ValueError, match="staging slots"):
        list(prefetch_to_device(_batches(3), DeviceStager("cpu", slots=2, staging=True), depth=2))
    with pytest.raises(ValueError, match="slots"):
        DeviceStager("cpu", slots=1)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_staging_is_pinned_and_overlaps_on_a_side_stream() -> None:
    stager = DeviceStager("cuda", slots=3)
    batches = _batches(6)
    outs = [b["image"].sum().item() for b in prefetch_to_device(batches, stager, depth=2)]
    assert outs == pytest.approx([b["image"].sum().item() for b in batches])
    slot = stager._slots[0]
    assert all(buf.is_pinned() for buf in slot.buffers.values())
