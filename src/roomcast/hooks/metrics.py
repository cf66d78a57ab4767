"""What each hook did: calls by outcome, calls running and waiting, a latency histogram.

Plain integers bumped by the client on each call and read when metrics are scraped, in the
``(kind, name, documentation, value)`` form that ``roomcast serve``'s ``/metrics`` renders
(``serve.metrics.Sample``).  That form has no labels, so the outcome and each histogram bucket
are part of the name: ``roomcast_hook_connect_failures_timeout``,
``roomcast_hook_connect_latency_le_1ms`` (cumulative, as Prometheus buckets are).  The
structured figures stay on ``HookStats`` for a renderer that has labels.  Pure: no I/O.
"""

from __future__ import annotations

import bisect
import dataclasses

from roomcast.hooks.decisions import Failure

__all__ = ["LATENCY_BUCKETS", "HookStats", "Sample"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Upper bounds in seconds: a backend on the same network answers in about a millisecond, and
the longest sensible timeout is a few seconds (a client waits that long for its upgrade)."""

Sample = tuple[str, str, str, float]
"""``(kind, name, documentation, value)``: kind is "gauge" or "counter" (as in
``roomcast.serve.metrics``, which this package does not import)."""


def _bound_name(bound: float) -> str:
    """``0.0025`` -> ``2_5ms``: a bucket's bound in a metric name."""
    return f"{bound * 1000:g}ms".replace(".", "_")


@dataclasses.dataclass(slots=True)
class HookStats:
    """One hook's figures since its client started.

    Attributes:
        hook: The hook's name (``connect``, ``join``, ``publish``).
        allowed: Answers that allowed.
        denied: Answers that refused.
        failures: Calls the failure policy decided, by why.
        in_flight: Calls with a request at the backend now.
        waiting: Calls waiting for a free slot now (``max_in_flight`` reached).
        peak_in_flight: The most calls at the backend at once.
        latency_counts: Calls per latency bucket (not cumulative); the last is over 5 s.
        latency_sum: Seconds all calls took, from the call to its decision (waiting included).
    """

    hook: str
    allowed: int = 0
    denied: int = 0
    failures: dict[Failure, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(Failure, 0)
    )
    in_flight: int = 0
    waiting: int = 0
    peak_in_flight: int = 0
    latency_counts: list[int] = dataclasses.field(
        default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1)
    )
    latency_sum: float = 0.0

    @property
    def calls(self) -> int:
        """Calls decided, by any outcome."""
        return self.allowed + self.denied + sum(self.failures.values())

    def observe(self, seconds: float) -> None:
        """One call's time, from the call to its decision."""
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def samples(self) -> list[Sample]:
        """The figures as metric samples, named ``roomcast_hook_<hook>_...``."""
        prefix = f"roomcast_hook_{self.hook}"
        what = f"the {self.hook} hook"
        found: list[Sample] = [
            ("counter", f"{prefix}_calls", f"Calls of {what}, any outcome.", self.calls),
            ("counter", f"{prefix}_allowed", f"Answers of {what} that allowed.", self.allowed),
            ("counter", f"{prefix}_denied", f"Answers of {what} that refused.", self.denied),
            ("gauge", f"{prefix}_in_flight", f"Calls of {what} at the backend.", self.in_flight),
            ("gauge", f"{prefix}_waiting", f"Calls of {what} waiting for a slot.", self.waiting),
        ]
        for failure, count in self.failures.items():
            found.append(
                (
                    "counter",
                    f"{prefix}_failures_{failure.value}",
                    f"Calls of {what} the failure policy decided: {failure.value}.",
                    count,
                )
            )
        cumulative = 0
        for bound, count in zip(LATENCY_BUCKETS, self.latency_counts, strict=False):
            cumulative += count
            found.append(
                (
                    "counter",
                    f"{prefix}_latency_le_{_bound_name(bound)}",
                    f"Calls of {what} decided within {bound:g} s.",
                    cumulative,
                )
            )
        found.append(
            (
                "counter",
                f"{prefix}_latency_seconds_sum",
                f"Seconds calls of {what} took, from the call to its decision.",
                self.latency_sum,
            )
        )
        return found
