"""When an attached experiment counts as gone: its owner stopped renewing its lease.

An experiment is tied to the process that opened it (a driver, a Tune trial, a Ray actor).
That process renews a lease every few seconds; a process that dies (SIGKILL, OOM, a lost
node, an ASHA-stopped trial) stops renewing, and once ``lease_s`` has passed since its last
renewal the cache detaches it, so rotation stops waiting for it and the idle clock can run.
A slow but live experiment keeps renewing from its own thread, whatever its epoch takes, so
it is still waited for. Experiments that never took a lease (an old client) are left to the
last resort, ``cache.experiment_timeout_s``, in :mod:`common.fair_rotation`.

Pure functions with the clock passed in: the cache actor calls them on a timer and before
every rotation decision, the tests call them with a fake clock.
"""

from __future__ import annotations

from typing import Mapping

__all__ = ["expired_leases", "lease_reason"]


def expired_leases(last_renewed: Mapping[str, float | None], now: float, lease_s: float) -> dict[str, float]:
    """Experiments whose lease ran out, each with its last renewal (in name order): renewed at least once,
    and not within the last ``lease_s`` seconds.

    ``last_renewed`` maps each attached experiment to its last renewal (``None``: it never
    took a lease, so it is not judged here).
    """
    return {name: at for name, at in sorted(last_renewed.items()) if at is not None and now - at > lease_s}


def lease_reason(last_renewed: float, now: float, lease_s: float) -> str:
    """Why an experiment was detached, for the status: how long its owner has been silent."""
    return (f"owner process gone: no heartbeat for {now - last_renewed:.0f} s "
            f"(cache.lease_s = {lease_s:g} s)")
