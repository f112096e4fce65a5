"""The allocator settings for processes that train and validate (common/heap.py)."""

from __future__ import annotations

import logging
import platform

import pytest

from common.config import load_config
from common.errors import ConfigError
from common.heap import M_ARENA_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, MIB, HeapSettings, heap_env, \
    keep_freed_memory


class FakeLibc:
    """Records mallopt calls; refuses the parameters it is told to."""

    def __init__(self, refuse: tuple[int, ...] = ()) -> None:
        self.calls: list[tuple[int, int]] = []
        self.refuse = refuse

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 0 if param in self.refuse else 1


def test_keeping_maps_mib_to_thresholds() -> None:
    s = HeapSettings.keeping(512)
    assert s == HeapSettings(trim_bytes=512 * MIB, mmap_bytes=128 * MIB, arenas=1)
    assert HeapSettings.keeping(64) == HeapSettings(trim_bytes=64 * MIB, mmap_bytes=16 * MIB)
    assert HeapSettings.keeping(4096).mmap_bytes == 128 * MIB  # a whole CT volume is still mmapped
    assert HeapSettings.keeping(0) is None


def test_env_names_glibc_variables() -> None:
    assert heap_env(512) == {"MALLOC_TRIM_THRESHOLD_": str(512 * MIB), "MALLOC_MMAP_THRESHOLD_": str(128 * MIB),
                             "MALLOC_ARENA_MAX": "1"}
    assert heap_env(0) == {}


def test_keep_freed_memory_sets_arenas_first() -> None:
    libc = FakeLibc()
    assert keep_freed_memory(512, libc) is True
    assert libc.calls == [(M_ARENA_MAX, 1), (M_TRIM_THRESHOLD, 512 * MIB), (M_MMAP_THRESHOLD, 128 * MIB)]


def test_zero_leaves_the_defaults() -> None:
    libc = FakeLibc()
    assert keep_freed_memory(0, libc) is False
    assert libc.calls == []


def test_refused_setting_warns(caplog: pytest.LogCaptureFixture) -> None:
    libc = FakeLibc(refuse=(M_ARENA_MAX,))
    with caplog.at_level(logging.WARNING, logger="common.heap"):
        assert keep_freed_memory(256, libc) is False
    assert [p for p, _ in libc.calls] == [M_ARENA_MAX, M_TRIM_THRESHOLD, M_MMAP_THRESHOLD]  # the rest still tried
    assert "heap_keep_mib=256" in caplog.text


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_real_glibc_takes_the_settings() -> None:
    assert keep_freed_memory(512) is True


def test_config_default_and_bad_value() -> None:
    assert load_config(None, []).training.heap_keep_mib == 512
    with pytest.raises(ConfigError, match="heap_keep_mib"):
        load_config(None, ["training.heap_keep_mib=-1"])
