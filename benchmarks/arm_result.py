"""What one time-to-Dice arm measured, whoever ran it (the project's launcher or MONAI's recipe)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ArmResult"]


@dataclass
class ArmResult:
    arm: str
    reached: bool
    time_to_target_s: float | None
    steps_to_target: int | None
    best_dice: float
    dice_per_class: tuple[float, ...]
    epochs: int
    steps: int
    wall_s: float
    fill_s: float
    wait_fraction: float
    step_s: float  # mean seconds of compute per training step
    validation_s: float
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after the arm
    history: tuple[tuple[float, float], ...] = ()  # (seconds since the arm started, mean Dice) per validation
    # mean compute seconds per step in epochs that a validation beside training overlapped (by at least half)
    # and in epochs it did not overlap at all; None where there is no such epoch (or validation runs inline)
    step_s_beside: tuple[float | None, float | None] = (None, None)

    def time_to(self, dice: float) -> float | None:
        """Seconds until a validation first reached ``dice`` (None if none did)."""
        return next((t for t, d in self.history if d >= dice), None)
