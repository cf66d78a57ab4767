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


RESERVED_DESCRIPTORS = 64
"""Descriptors kept out of the WebSocket port's budget whatever the caps: standard streams,
the event loop's own, Redis connections, log files, a supervisor's pipes."""


@dataclasses.dataclass(frozen=True, slots=True)
class DescriptorBudget:
    """How many sockets the WebSocket port may hold, from the process's open-file limit.

    Running out of descriptors is worse than refusing: ``accept()`` fails with EMFILE, the
    client gets no answer at all, and (under uvloop) the listener can be closed for good.  So
    the port holds at most ``sockets`` at once, and admits at most ``connections`` of them as
    WebSocket clients; the difference is headroom for the sockets that are being answered
    503, doing their handshake, or asking ``/healthz``.
    """

    sockets: int
    """Sockets the WebSocket port may hold at once; it stops accepting at this count."""
    connections: int
    """WebSocket connections admitted; beyond it, upgrades get HTTP 503."""
    lowered: bool
    """True when the open-file limit, not the configured cap, set ``connections``."""

    @classmethod
    def plan(cls, open_files: int, max_connections: int, api_connections: int) -> DescriptorBudget:
        """The budget for a process allowed ``open_files`` descriptors, configured for
        ``max_connections`` clients, whose API port may hold ``api_connections`` sockets."""
        sockets = open_files - RESERVED_DESCRIPTORS - api_connections
        headroom = max(16, sockets // 20)
        if sockets - headroom < 1:
            raise ValueError(
                f"an open-file limit of {open_files} leaves no room for WebSocket clients "
                f"({RESERVED_DESCRIPTORS} reserved, {api_connections} for the API port): "
                "raise it (ulimit -n)"
            )
        connections = min(max_connections, sockets - headroom)
        return cls(sockets, connections, connections < max_connections)
