"""One local Ray per test session, tiny demo volumes, and a cache factory that cleans up after itself."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import ray

from common.catalog import Catalog, fingerprint, load_catalog
from common.config import ExperimentConfig, config_from_dict
from common.demo_data import make_demo_data


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A 2-CPU local cluster; yields its GCS address so a second driver process can attach."""
    # address="local": always a fresh cluster, never one that `ray start` left running on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("demo"), cases=6, size=32)


@pytest.fixture(scope="session")
def stats_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stats")


def small_config(stats_dir: Path, preprocessing: dict[str, Any] | None = None, **cache: Any) -> ExperimentConfig:
    """3-item pool of 5 training cases, R = 2; a fresh namespace so tests never share an actor.

    No disk tier unless a test asks for one, so no test reads volumes another one wrote.
    """
    cache_section = {"cache_num": 3, "replace_rate": 0.5, "stats_dir": str(stats_dir), "task_num_cpus": 0.5,
                     "namespace": f"test-{uuid.uuid4().hex[:8]}", "disk_dir": None,
                     "state_dir": str(stats_dir / "state"), **cache}
    return config_from_dict({"sampler": {"patch_size": [16, 16, 16]}, "cache": cache_section,
                             "preprocessing": preprocessing or {}})


@pytest.fixture
def make_cache(ray_cluster: str) -> Iterator[Callable[..., tuple[Any, Catalog, ExperimentConfig, str]]]:
    """Start (or attach to) a cache for (data, config); every cache made here is killed afterwards."""
    from cache_service.client import get_or_create_cache, stop_cache

    made: list[Any] = []

    def make(root: Path, cfg: ExperimentConfig) -> tuple[Any, Catalog, ExperimentConfig, str]:
        catalog = load_catalog(root, cfg.data)
        fp = fingerprint(catalog, cfg.preprocessing)
        handle = get_or_create_cache(catalog, cfg, fp, actor_num_cpus=0.25)
        made.append(handle)
        return handle, catalog, cfg, fp

    yield make
    for handle in made:
        try:
            stop_cache(handle)
        except Exception:  # already gone
            pass


@pytest.fixture
def config_for(stats_dir: Path) -> Callable[..., ExperimentConfig]:
    """``config_for(disk_dir=..., preprocessing={...})``: a small test config (see :func:`small_config`)."""
    return lambda **kw: small_config(stats_dir, **kw)
