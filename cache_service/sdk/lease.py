"""Keeping an experiment attached for as long as the process that opened it lives.

The cache detaches an experiment whose lease was not renewed for ``cache.lease_s``
(:mod:`common.liveness`). :class:`LeaseKeeper` renews it from a daemon thread of the
opening process, so training never waits on it and a dead process (SIGKILL, OOM, a lost
node, a stopped Tune trial) simply stops renewing. A copy of the experiment in a Ray Train
worker or a forked child has no keeper: only the opener renews.

If the cache answers that it no longer knows the experiment (it was detached while this
process was frozen, or a restart lost the registry), the keeper registers it again: the
process is evidently alive. Errors reaching the cache are logged and the next round tries
again; with a :class:`~cache_service.recovery.ResilientCache` a renewal waits out a restart.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger(__name__)

__all__ = ["LeaseKeeper", "RENEWALS_PER_LEASE"]

RENEWALS_PER_LEASE = 5  # renew every lease_s / 5: four renewals may be lost before the cache gives up on us


class LeaseKeeper:
    """Renews one experiment's lease every ``interval_s`` until :meth:`stop`."""

    def __init__(self, name: str, renew: Callable[[], bool], reattach: Callable[[], None],
                 interval_s: float) -> None:
        self.name, self.interval_s = name, interval_s
        self._renew, self._reattach = renew, reattach
        self._stopped = threading.Event()
        self._lock = threading.Lock()  # a re-attach and stop() never interleave: no registration after close
        self._thread = threading.Thread(target=self._loop, name=f"smartcache-lease-{name}", daemon=True)

    def start(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def renew_once(self) -> None:
        """One renewal; re-attach if the cache forgot us (unless stopping)."""
        if self._renew():
            return
        with self._lock:
            if not self._stopped.is_set():
                log.warning("the cache no longer knows experiment %s; registering it again", self.name)
                self._reattach()

    def _loop(self) -> None:
        while not self._stopped.wait(self.interval_s):
            try:
                self.renew_once()
            except Exception as err:  # the thread must outlive any one failed renewal, or the lease lapses
                log.warning("could not renew the lease of experiment %s (%s); retrying", self.name, err)

    def stop(self) -> None:
        """No renewal or re-attach after this returns (a renewal already in flight may still land)."""
        with self._lock:
            self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
