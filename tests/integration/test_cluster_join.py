"""The README's cluster recipe on the installed Ray: ``ray start --head``, then clients that join it.

A head node of our own (its own ``RAY_TMPDIR`` and token file, so no other cluster on this
machine is touched or found), started with ``--block`` in its own process group and killed
by PID afterwards. Ray turns token authentication on for it because a token exists; the
clients run with ``RAY_AUTH_MODE`` unset, as a user's shell has it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from common.demo_data import make_demo_data

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listens(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _stop(head: subprocess.Popen[bytes]) -> None:
    """Kill the head and everything it started (workers set up their own sessions), by PID."""
    try:
        family = [head.pid] + [c.pid for c in psutil.Process(head.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = [head.pid]
    os.killpg(head.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                                              for p in family):
        time.sleep(0.5)
    for pid in family:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    head.wait(timeout=30)


@pytest.fixture(scope="module")
def head() -> Iterator[tuple[dict[str, str], str]]:
    """(client environment, GCS address) of a fresh ``ray start --head`` with token auth."""
    tmp = Path(tempfile.mkdtemp(prefix="scj", dir="/tmp"))  # short: Ray's socket paths live under it
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env.update(RAY_TMPDIR=str(tmp), RAY_AUTH_TOKEN_PATH=str(token), PYTHONPATH=str(ROOT))
    port = _free_port()
    log = open(tmp / "head.log", "wb")
    proc = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--num-cpus", "2", "--port", str(port),
                             "--include-dashboard=false", "--disable-usage-stats", "--block"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, current = time.monotonic() + 120, tmp / "ray" / "ray_current_cluster"
        while not (current.is_file() and _listens(current.read_text().strip().rsplit(":", 1)[0], port)):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp / "head.log").read_text()[-2000:]
            time.sleep(0.5)
        assert "Token authentication is enabled" in (tmp / "head.log").read_text()
        yield env, current.read_text().strip()
    finally:
        _stop(proc)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _run(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_sdk_connect_with_address_auto_joins_the_head(head, tmp_path: Path) -> None:
    env, address = head
    data = make_demo_data(tmp_path / "data", cases=4, size=24)
    code = (f"from cache_service import SmartCache\n"
            f"cache = SmartCache.connect({str(data)!r}, address='auto', cache_num=2, val_fraction=0.25,\n"
            f"    settings={{'cache': {{'stats_dir': {str(tmp_path)!r}, 'task_num_cpus': 0.5}}}})\n"
            f"import ray\n"
            f"print('joined', ray.get_runtime_context().gcs_address, cache.status().items_cached)\n"
            f"cache.stop()\n")
    done = _run([sys.executable, "-c", code], env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].split() == ["joined", address, "2"]


def test_cli_serve_and_stop_join_through_ray_address(head) -> None:
    """RAY_ADDRESS=HOST:PORT: the case in which Ray alone sends no token (it does only for a bare 'auto')."""
    env, address = head
    env = {**env, "RAY_ADDRESS": address}
    served = _run([str(BIN / "smartcache"), "serve", "--port", str(_free_port())], env)
    assert served.returncode == 0, served.stderr[-3000:]
    assert "status API running at http://127.0.0.1:" in served.stdout
    stopped = _run([str(BIN / "smartcache"), "stop", "--address", "auto"], env)
    assert stopped.returncode == 0 and "stopped smartcache-api" in stopped.stdout, stopped.stderr[-3000:]


def test_a_client_without_the_token_is_told_the_cluster_refused_it(head) -> None:
    env, address = head
    env = {**env, "RAY_AUTH_MODE": "disabled"}  # the user turned auth off for this shell: kept, and refused
    done = _run([str(BIN / "smartcache"), "stop", "--address", address], env)
    assert done.returncode == 2
    assert f"a Ray cluster is running at {address} but refused this process" in done.stderr, done.stderr[-3000:]
    free = f"127.0.0.1:{_free_port()}"
    done = _run([str(BIN / "smartcache"), "stop", "--address", free], env, timeout=60)
    assert done.returncode == 2 and f"nothing listens on {free}" in done.stderr, done.stderr[-3000:]
