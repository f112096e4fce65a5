"""How long to wait between attempts to reach a service that went away, and when to give up.

Pure: the clock and the random generator come in as arguments, so the policy is tested
without sleeping and without Ray. Exponential growth with jitter keeps many consumers that
lost the same cache from knocking on its door in lockstep while it warms again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Backoff", "BackoffClock"]


@dataclass(frozen=True)
class Backoff:
    """Delays ``initial_s * factor**k`` (capped at ``max_s``), each scaled by a jitter in [1 - j, 1]."""

    timeout_s: float
    initial_s: float = 0.25
    factor: float = 2.0
    max_s: float = 5.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        if not (self.timeout_s > 0 and 0 < self.initial_s <= self.max_s and self.factor >= 1
                and 0 <= self.jitter < 1):
            raise ValueError(f"invalid backoff {self}: need timeout > 0, 0 < initial <= max, factor >= 1, "
                             "0 <= jitter < 1")

    def delay(self, attempt: int, rng: np.random.Generator) -> float:
        """The wait before attempt ``attempt + 1`` (``attempt`` counts failures so far, from 0)."""
        base = min(self.max_s, self.initial_s * self.factor ** min(attempt, 64))
        return base * (1.0 - self.jitter * float(rng.random()))

    def start(self, now: float, rng: np.random.Generator) -> "BackoffClock":
        return BackoffClock(self, now, rng)


class BackoffClock:
    """One recovery: counts failures, says how long to sleep next, or that the time is up."""

    def __init__(self, policy: Backoff, started: float, rng: np.random.Generator) -> None:
        self.policy, self.started, self.rng = policy, started, rng
        self.failures = 0

    def next_delay(self, now: float) -> float | None:
        """Seconds to wait before trying again, or None once ``timeout_s`` has passed (never overshoots it)."""
        left = self.policy.timeout_s - (now - self.started)
        if left <= 0:
            return None
        wait = self.policy.delay(self.failures, self.rng)
        self.failures += 1
        return max(0.0, min(wait, left))

    def renew(self, now: float) -> None:
        """Count the timeout from ``now`` again: the service showed a sign of progress (e.g. a fill that
        moved on), so it is not away, however long that progress takes."""
        self.started = now

