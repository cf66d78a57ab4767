"""Per-connection rate limiting: a token bucket, pure (the caller passes the clock in).

A client may send ``rate`` messages per second on average and ``burst`` at once.  A message
over the limit is refused; a client that keeps going (``strikes`` refusals in a row without
the bucket refilling) is cut off.  The state is three numbers per connection, kept by the
transport; this module only computes.
"""

from __future__ import annotations

import dataclasses
import enum

__all__ = ["RateLimit", "Verdict"]


class Verdict(enum.Enum):
    ALLOW = "allow"
    REFUSE = "refuse"
    """Over the limit: answer with an error, drop the message."""
    CUT_OFF = "cut_off"
    """Over the limit for too long: close the connection (1008)."""


@dataclasses.dataclass(frozen=True, slots=True)
class RateLimit:
    """Args: rate (messages per second), burst (bucket size), strikes (refusals in a row
    before the connection is closed)."""

    rate: float
    burst: float
    strikes: int = 50

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1 or self.strikes < 1:
            raise ValueError("rate must be positive, burst and strikes at least 1")

    def check(
        self, tokens: float, stamp: float, strikes: int, now: float
    ) -> tuple[Verdict, float, float, int]:
        """One incoming message: ``(verdict, tokens, stamp, strikes)`` to keep."""
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        if tokens >= 1:
            return Verdict.ALLOW, tokens - 1, now, 0
        strikes += 1
        verdict = Verdict.CUT_OFF if strikes >= self.strikes else Verdict.REFUSE
        return verdict, tokens, now, strikes
