"""Use the shared SmartCache from your own training loop (plain PyTorch, MONAI, Lightning, Ray Train).

Imports torch and MONAI: the cache actor's process never imports this package (see
``cache_service/__init__.py``, which re-exports these names lazily).
"""

from cache_service.sdk.api import Experiment, SmartCache
from cache_service.sdk.batches import ConsumerSettings, CropBatches, CropDataset, apply_suffix
from cache_service.sdk.device import DeviceVolumes
from cache_service.sdk.mismatch import CacheSettingsWarning
from cache_service.snapshot import Snapshot
from cache_service.status import CacheStatus, ExperimentStatus, SamplerReport
from common.chain import CropSpec, UserChain, split_user_chain
from common.scoring import ValidationResult
from common.volume import PreparedVolume

__all__ = [
    "CacheSettingsWarning",
    "CacheStatus",
    "ConsumerSettings",
    "CropBatches",
    "CropDataset",
    "CropSpec",
    "DeviceVolumes",
    "Experiment",
    "ExperimentStatus",
    "PreparedVolume",
    "SamplerReport",
    "SmartCache",
    "Snapshot",
    "UserChain",
    "ValidationResult",
    "apply_suffix",
    "split_user_chain",
]
