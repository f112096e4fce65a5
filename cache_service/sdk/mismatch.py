"""What a second ``connect`` is told when the cache it joins runs with other settings.

Caches are shared by fingerprint (dataset + prefix), so a second program with the same data
and chain joins the running cache whatever ``cache_num`` or ``replace_rate`` it asked for. The
documented rule (docs/api.md, README): the running cache keeps its settings, since changing
them would rotate the pool under the experiments already training on it; the joining program is
warned, naming each difference and how to get its own settings (stop the cache, or use another
``namespace``). It is a warning, not a refusal, because attaching is the point of sharing.
"""

from __future__ import annotations

import warnings

from cache_service.status import CacheStatus
from common.config import CacheConfig
from common.rotation import replace_count


class CacheSettingsWarning(UserWarning):
    """The running cache's settings differ from the ones this ``connect`` asked for."""


def setting_differences(asked: CacheConfig, running: CacheStatus) -> list[str]:
    """Each setting of the running cache that differs from ``asked``, as 'name running (asked value)'."""
    pool = asked.pool_size(running.train_items)
    found = []
    if running.cache_num != pool:
        found.append(f"cache_num {running.cache_num} (asked {pool}, from cache_num={asked.cache_num}, "
                     f"cache_rate={asked.cache_rate})")
    replace_num = replace_count(running.cache_num, asked.replace_rate, running.train_items)
    if running.replace_num != replace_num:
        found.append(f"{running.replace_num} replacements per rotation (asked replace_rate={asked.replace_rate}: "
                     f"{replace_num})")
    if "byte_budget" in asked.model_fields_set and not running.budget_message and \
            running.byte_budget != int(asked.byte_budget):
        found.append(f"byte_budget {running.byte_budget} B (asked {int(asked.byte_budget)} B)")
    if (asked.disk_path() is None) != (running.disk_tier == "off"):
        found.append(f"disk tier {running.disk_tier} (asked disk_dir={asked.disk_dir})")
    return found


def warn_if_different(asked: CacheConfig, running: CacheStatus) -> list[str]:
    """Warn once, naming every difference; returns them (empty when the running cache is as asked)."""
    found = setting_differences(asked, running)
    if found:
        warnings.warn(f"cache {running.name} is already running with other settings: {'; '.join(found)}. "
                      "It keeps them (other experiments train on it); to use yours, stop it "
                      "(SmartCache.stop() or smartcache stop) or connect with another namespace=",
                      CacheSettingsWarning, stacklevel=3)
    return found
