"""How long a client waits before each reconnection attempt."""

from __future__ import annotations

import dataclasses
import random

__all__ = ["Backoff"]


@dataclasses.dataclass(frozen=True, slots=True)
class Backoff:
    """Jittered exponential backoff, the same as the JavaScript client's.

    Attempt ``n`` (1, 2, ...) waits ``min(maximum, initial * factor ** (n - 1))`` seconds,
    minus a random part of up to ``jitter`` of it, so that a thousand clients cut off by one
    restart do not all come back in the same millisecond.

    Attributes:
        initial: Seconds before the first attempt.
        maximum: The longest wait.
        factor: Growth per attempt.
        jitter: The share of each wait that is random (0: none, 0.5: between half and all).
        max_attempts: Attempts after which the client gives up and closes (None: never).
    """

    initial: float = 0.5
    maximum: float = 15.0
    factor: float = 2.0
    jitter: float = 0.5
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if not (self.initial >= 0 and self.maximum >= 0 and self.factor >= 1):
            raise ValueError("backoff needs initial >= 0, maximum >= 0 and factor >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    def delay(self, attempt: int, draw: float | None = None) -> float:
        """Seconds to wait before attempt ``attempt`` (1-based); ``draw`` in [0, 1) replaces
        the random draw."""
        try:
            base = min(self.maximum, self.initial * self.factor ** max(attempt - 1, 0))
        except OverflowError:  # a float power past 1e308, long after reaching the maximum
            base = self.maximum
        share = random.random() if draw is None else draw
        return base * (1 - self.jitter * share)

    def gives_up(self, attempt: int) -> bool:
        """Whether attempt ``attempt`` is one too many."""
        return self.max_attempts is not None and attempt > self.max_attempts
