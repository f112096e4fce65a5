"""The dashboard in a real headless browser: the script runs, draws the pool and the ratio chart.

Serves the in-memory example source on a free loopback port with uvicorn, then lets
chromium render it (DOM after scripts, and a screenshot kept in test-artifacts/).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import uvicorn

from cache_service.api import ApiSettings, create_app
from cache_service.api.samples import cache_status, experiment
from cache_service.api.source import InMemorySource

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=5000", "--window-size=1280,900"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TOKEN = "s3cret-token_for-the-browser"


def _serve(source: InMemorySource, token: str | None = None) -> Iterator[str]:
    port = _free_port()
    app = create_app(source, ApiSettings(port=port, token=token))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def dashboard_url() -> Iterator[str]:
    yield from _serve(InMemorySource([cache_status()]))


@pytest.fixture(scope="module")
def guarded_url() -> Iterator[str]:
    """The same page on an API with a token: the data endpoints answer 401 without it."""
    yield from _serve(InMemorySource([cache_status()]), TOKEN)


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        pytest.skip("chromium is not on PATH (apt-get install chromium); the dashboard is not rendered")
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def test_rendered_dom_has_pool_items_and_ratio_chart(dashboard_url: str, tmp_path: Path) -> None:
    out = _chromium(tmp_path, "--dump-dom", dashboard_url)
    dom = out.stdout
    assert 'data-fingerprint="0123456789abcdef"' in dom, out.stderr[-2000:]
    for item in cache_status().pool:
        assert f'data-item="{item}"' in dom
    assert 'data-state="leaving"' in dom and 'data-state="quarantined"' in dom
    assert 'data-state="validation"' in dom  # validation volumes drawn as such, not as waiting pool items
    assert 'data-experiment="spleen-a1b2c3"' in dom
    chart = dom[dom.index('class="chart ratio-chart"'):]
    assert '<path class="line" d="M' in chart  # the script drew the ratio history
    assert 'id="error" style="display: none;"' in dom  # both fetches answered


def test_with_a_token_in_the_fragment_the_page_shows_the_cache(guarded_url: str, tmp_path: Path) -> None:
    out = _chromium(tmp_path, "--dump-dom", f"{guarded_url}#token={TOKEN}")
    dom = out.stdout
    assert 'data-fingerprint="0123456789abcdef"' in dom, out.stderr[-2000:]
    assert 'data-experiment="spleen-a1b2c3"' in dom
    assert 'id="error" style="display: none;"' in dom  # /cache and /cache/items took the bearer header
    assert TOKEN not in dom


def test_without_the_token_the_page_asks_for_it(guarded_url: str, tmp_path: Path) -> None:
    dom = _chromium(tmp_path, "--dump-dom", guarded_url).stdout
    assert 'id="login" style="display: block;"' in dom and "HTTP 401" in dom
    assert 'data-fingerprint="0123456789abcdef"' not in dom


def test_screenshot(dashboard_url: str, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    out = _chromium(tmp_path, f"--screenshot={shot}", dashboard_url)
    assert shot.is_file() and shot.stat().st_size > 10_000, out.stderr[-2000:]


def test_sweep_section_lists_the_trials(tmp_path: Path) -> None:
    trial = experiment("sw-t0-abc123")
    trial.info = {"sweep": "sw", "trial": "sw-t0", "trial_id": "t0", "values": {"training.lr": 0.01}}
    served = _serve(InMemorySource([cache_status(experiments=[trial, experiment()])]))
    url = next(served)
    try:
        out = _chromium(tmp_path, "--dump-dom", url)
    finally:
        next(served, None)
    assert 'data-sweep="sw"' in out.stdout and 'data-trial="sw-t0"' in out.stdout, out.stderr[-2000:]
    assert "training.lr=0.01" in out.stdout and 'id="error" style="display: none;"' in out.stdout
