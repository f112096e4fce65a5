"""Reading a CPU's bf16 support from /proc/cpuinfo, and the warning when bf16 is asked of a CPU without it."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import trainer.model as model_module
from common.config import TrainingConfig
from common.cpu_features import has_native_bf16, native_bf16
from trainer.model import AmpPolicy

X86_BF16 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
X86_OLD = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n"


@pytest.mark.parametrize("text, expected", [(X86_BF16, True), (X86_OLD, False), (ARM_BF16, True),
                                            ("processor\t: 0\nmodel name\t: unknown\n", None)])
def test_native_bf16_reads_the_flags_of_x86_and_arm(tmp_path: Path, text: str, expected: bool | None):
    info = tmp_path / "cpuinfo"
    info.write_text(text)
    assert native_bf16(info) is expected


def test_native_bf16_is_not_known_without_cpuinfo(tmp_path: Path):
    assert native_bf16(tmp_path / "absent") is None
    assert has_native_bf16(frozenset({"amx_bf16"})) and not has_native_bf16(frozenset({"avx512f"}))


@pytest.mark.parametrize("native, cpu_bf16, warned", [(False, True, True), (True, True, False),
                                                      (None, True, False), (False, False, False)])
def test_bf16_on_a_cpu_without_it_warns_with_the_fix(monkeypatch, native, cpu_bf16, warned):
    monkeypatch.setattr(model_module, "native_bf16", lambda: native)
    amp = AmpPolicy.for_device(torch.device("cpu"), TrainingConfig(cpu_bf16=cpu_bf16))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        amp.warn_if_emulated()
    messages = [str(w.message) for w in caught]
    assert bool(messages) is warned
    if warned:
        assert "training.cpu_bf16: false" in messages[0]
