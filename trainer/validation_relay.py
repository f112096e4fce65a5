"""Pass the validation service's rows on to a callback as they arrive (a Tune trial reports Dice from it).

The validation service runs beside training and keeps every row; the launcher's progress loop
polls it anyway, so a relay there costs one call per poll and needs no change in the service.
"""

from __future__ import annotations

from typing import Any, Callable

import ray

from trainer.validator_link import ValidatorLink


class ValidationRelay:
    """Hands each new validation row of the validation service to a callback exactly once, in order."""

    def __init__(self, validator: ValidatorLink, callback: Callable[[dict[str, Any]], None] | None) -> None:
        self.validator, self.callback, self.sent = validator, callback, 0

    def poll(self) -> None:
        """Send the rows not sent yet; an actor restarting now just means they are sent next time."""
        if self.callback is None:
            return
        try:
            rows = self.validator.history(timeout=10)
        except ray.exceptions.RayError:
            return
        for row in rows[self.sent:]:
            self.sent += 1
            self.callback(row)
