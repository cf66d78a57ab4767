"""What each hook did: calls by outcome, calls running and waiting, a latency histogram.

Plain integers bumped by the client on each call and read when metrics are scraped.  They are
handed over as labelled families (``roomcast.figures.Family``), one family per figure with a
``hook`` label, so that ``/metrics`` shows one ``roomcast_hook_calls_total`` with a series per
hook and outcome rather than a metric name per combination, and the latency as a real
Prometheus histogram whose quantiles a dashboard can compute (``histogram_quantile``).
Pure: no I/O.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterable

from roomcast.figures import Family, HistogramSeries, Series
from roomcast.hooks.decisions import Failure

__all__ = ["LATENCY_BUCKETS", "HookStats", "hook_families"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Upper bounds in seconds: a backend on the same network answers in about a millisecond, and
the longest sensible timeout is a few seconds (a client waits that long for its upgrade)."""


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

    def histogram(self) -> HistogramSeries:
        """The latency as cumulative counts per upper bound (``+Inf`` last)."""
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for bound, count in zip(LATENCY_BUCKETS, self.latency_counts, strict=False):
            cumulative += count
            buckets.append((f"{bound:g}", cumulative))
        buckets.append(("+Inf", cumulative + self.latency_counts[-1]))
        return HistogramSeries((self.hook,), tuple(buckets), self.latency_sum)


def hook_families(hooks: Iterable[HookStats]) -> list[Family]:
    """The figures of ``hooks`` (each configured hook's ``HookStats``) for ``/metrics``.

    Outcomes are ``allowed`` and ``denied`` (the backend's answers) and ``failed`` (the
    failure policy decided; why is in ``roomcast_hook_failures_total{kind}``).
    """
    stats = list(hooks)
    hook = ("hook",)
    calls = tuple(
        Series((s.hook, outcome), value)
        for s in stats
        for outcome, value in (
            ("allowed", s.allowed),
            ("denied", s.denied),
            ("failed", sum(s.failures.values())),
        )
    )
    failures = tuple(
        Series((s.hook, failure.value), count)
        for s in stats
        for failure, count in s.failures.items()
    )
    return [
        Family(
            "counter",
            "roomcast_hook_calls",
            "Hook calls decided, by outcome.",
            (*hook, "outcome"),
            calls,
        ),
        Family(
            "counter",
            "roomcast_hook_failures",
            "Hook calls the failure policy decided, by why (timeout, saturated, status, "
            "invalid, unreachable).",
            (*hook, "kind"),
            failures,
        ),
        Family(
            "gauge",
            "roomcast_hook_in_flight",
            "Hook calls with a request at the backend now.",
            hook,
            tuple(Series((s.hook,), s.in_flight) for s in stats),
        ),
        Family(
            "gauge",
            "roomcast_hook_peak_in_flight",
            "The most hook calls at the backend at once since the start.",
            hook,
            tuple(Series((s.hook,), s.peak_in_flight) for s in stats),
        ),
        Family(
            "gauge",
            "roomcast_hook_waiting",
            "Hook calls waiting for a free slot (the in-flight cap reached).",
            hook,
            tuple(Series((s.hook,), s.waiting) for s in stats),
        ),
        Family(
            "histogram",
            "roomcast_hook_latency_seconds",
            "Seconds from a hook call to its decision (waiting for a slot included).",
            hook,
            tuple(s.histogram() for s in stats),
        ),
    ]
