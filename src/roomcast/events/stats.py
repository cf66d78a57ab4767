"""What a webhook dispatcher counts, and its metrics in the shape the server renders.

Plain counters bumped on the delivery path and read only when scraped, like the hub's: nothing
here runs per event.  ``samples`` gives ``(kind, name, documentation, value)`` tuples, the
``Sample`` of ``roomcast.serve.metrics`` (whose ``more=`` argument takes them as they are);
the latency histogram has labelled buckets, which a ``Sample`` cannot carry, so it offers
``buckets()`` and ``sum`` in the form of ``prometheus_client``'s ``HistogramMetricFamily``.
Pure: no I/O.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
from collections.abc import Sequence

from roomcast.events.outbox import Outbox
from roomcast.figures import Family, Figure, HistogramSeries, Series

__all__ = [
    "LATENCY_BUCKETS",
    "DispatcherStats",
    "Failure",
    "LatencyHistogram",
    "Sample",
    "figures",
    "samples",
]

Sample = tuple[str, str, str, float]
"""``(kind, name, documentation, value)``, kind "gauge" or "counter": the shape
``roomcast.serve.metrics`` renders (repeated here so that events never import a server)."""

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the attempt latency histogram."""


class Failure(enum.StrEnum):
    """Why an attempt was not acknowledged."""

    TIMEOUT = "timeout"
    """No complete answer within the timeout (the receiver hangs, or is far too slow)."""
    CONNECTION = "connection"
    """The connection was refused, reset or closed before an answer."""
    STATUS = "status"
    """An answer other than 2xx."""


@dataclasses.dataclass(slots=True)
class DispatcherStats:
    """What the dispatcher counts; plain integers, read by ``samples``."""

    events_delivered: int = 0
    batches_delivered: int = 0
    attempts: int = 0
    timeouts: int = 0
    connection_failures: int = 0
    status_failures: int = 0
    outbox_errors: int = 0
    """Claims and acknowledgements the outbox failed (a Redis outbox while Redis is away)."""
    last_status: int = 0
    """The HTTP status of the last answer (0 before the first)."""
    backoff: float = 0.0
    """Seconds of the last wait between attempts while failures go on; 0 once one succeeds."""


class LatencyHistogram:
    """Durations of delivery attempts, successful or not, counted into fixed buckets.

    ``buckets()`` and ``sum`` are what ``prometheus_client``'s ``HistogramMetricFamily``
    takes, so exposing it is one line where the server builds its metrics.
    """

    __slots__ = ("_counts", "bounds", "count", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(sorted(bounds))
        self._counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        """Count one attempt that took ``seconds``."""
        # The first bound >= seconds: Prometheus buckets are "less than or equal".
        self._counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.count += 1
        self.sum += seconds

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(upper bound, count)`` pairs, ending with ``("+Inf", count)``."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.bounds, self._counts, strict=False):
            running += count
            out.append((str(bound), running))
        out.append(("+Inf", self.count))
        return out


def samples(stats: DispatcherStats, outbox: Outbox) -> list[Sample]:
    """A dispatcher's and its outbox's metrics, read now."""
    return [
        (
            "gauge",
            "roomcast_events_backlog",
            "Lifecycle events in the outbox, not yet acknowledged by the webhook receiver.",
            outbox.backlog,
        ),
        (
            "counter",
            "roomcast_events_dropped",
            "Lifecycle events dropped (oldest first) because the outbox was full.",
            outbox.dropped,
        ),
        (
            "counter",
            "roomcast_events_delivered",
            "Lifecycle events acknowledged by the webhook receiver.",
            stats.events_delivered,
        ),
        (
            "counter",
            "roomcast_events_outbox_errors",
            "Claims and acknowledgements the outbox failed.",
            stats.outbox_errors,
        ),
        (
            "counter",
            "roomcast_webhook_deliveries",
            "Webhook requests acknowledged with a 2xx answer.",
            stats.batches_delivered,
        ),
        ("counter", "roomcast_webhook_attempts", "Webhook requests sent.", stats.attempts),
        (
            "counter",
            "roomcast_webhook_timeouts",
            "Webhook requests not answered within the timeout.",
            stats.timeouts,
        ),
        (
            "counter",
            "roomcast_webhook_connection_failures",
            "Webhook requests whose connection was refused, reset or closed.",
            stats.connection_failures,
        ),
        (
            "counter",
            "roomcast_webhook_status_failures",
            "Webhook requests answered with a status other than 2xx.",
            stats.status_failures,
        ),
        (
            "gauge",
            "roomcast_webhook_last_status",
            "HTTP status of the last webhook answer (0: none yet).",
            stats.last_status,
        ),
        (
            "gauge",
            "roomcast_webhook_backoff_seconds",
            "Current wait between webhook retries (0: the last attempt succeeded).",
            stats.backoff,
        ),
    ]


_BY_KIND = frozenset(
    {
        "roomcast_webhook_timeouts",
        "roomcast_webhook_connection_failures",
        "roomcast_webhook_status_failures",
    }
)


def figures(stats: DispatcherStats, latency: LatencyHistogram, outbox: Outbox) -> list[Figure]:
    """The same as ``samples``, with the failures as one family labelled by ``kind`` (a
    ``Failure``) and the attempt latency as a histogram: what ``/metrics`` shows, where a
    dashboard sums failures over kinds and takes quantiles from the buckets."""
    out: list[Figure] = [s for s in samples(stats, outbox) if s[1] not in _BY_KIND]
    counts = {
        Failure.TIMEOUT: stats.timeouts,
        Failure.CONNECTION: stats.connection_failures,
        Failure.STATUS: stats.status_failures,
    }
    out.append(
        Family(
            "counter",
            "roomcast_webhook_failures",
            "Webhook requests not acknowledged, by kind: timeout, connection (refused, reset, "
            "closed), status (an answer other than 2xx).",
            ("kind",),
            tuple(Series((kind.value,), value) for kind, value in counts.items()),
        )
    )
    out.append(
        Family(
            "histogram",
            "roomcast_webhook_latency_seconds",
            "Duration of webhook requests, acknowledged or not.",
            (),
            (HistogramSeries((), tuple(latency.buckets()), latency.sum),),
        )
    )
    return out
