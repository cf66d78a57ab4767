"""A dispatcher's metrics: the latency histogram, and samples the server renders as they are."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from roomcast.events.memory import MemoryOutbox
from roomcast.events.schema import Kind, LifecycleEvent
from roomcast.events.stats import DispatcherStats, LatencyHistogram, samples
from roomcast.hub import Hub
from roomcast.serve.metrics import ServerCounters, metrics_registry, render


def test_the_histogram_counts_into_less_or_equal_buckets() -> None:
    """A value on a bound counts in that bucket; ``buckets()`` is cumulative, +Inf last."""
    histogram = LatencyHistogram([1.0, 0.1])
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(value)
    assert histogram.bounds == (0.1, 1.0)
    assert histogram.buckets() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert histogram.count == 4
    assert histogram.sum == pytest.approx(3.65)


def test_samples_read_the_stats_and_the_outbox() -> None:
    """Backlog and dropped come from the outbox, the rest from the counters, read now."""
    outbox = MemoryOutbox(max_events=2)
    outbox.append(LifecycleEvent(Kind.JOIN, f"e{n}", 1.0, n, user="u") for n in range(3))
    stats = DispatcherStats(events_delivered=7, timeouts=2, last_status=503, backoff=1.5)
    values = {name: value for _, name, _, value in samples(stats, outbox)}
    assert values["roomcast_events_backlog"] == 2
    assert values["roomcast_events_dropped"] == 1
    assert values["roomcast_events_delivered"] == 7
    assert values["roomcast_webhook_timeouts"] == 2
    assert values["roomcast_webhook_last_status"] == 503
    assert values["roomcast_webhook_backoff_seconds"] == 1.5
    kinds = {kind for kind, *_ in samples(stats, outbox)}
    assert kinds == {"gauge", "counter"}


class _Latency(Collector):
    def __init__(self, histogram: LatencyHistogram) -> None:
        self._histogram = histogram

    def collect(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(
            "roomcast_webhook_attempt_seconds",
            "Duration of webhook attempts.",
            buckets=self._histogram.buckets(),
            sum_value=self._histogram.sum,
        )


def test_the_server_renders_them_without_a_conversion() -> None:
    """``samples`` goes to ``metrics_registry(more=...)`` as it is, and the histogram to
    ``HistogramMetricFamily``: /metrics shows the backlog and the latencies."""
    outbox = MemoryOutbox()
    outbox.append([LifecycleEvent(Kind.CONNECT, "e1", 1.0, 1, user="u")])
    stats = DispatcherStats(connection_failures=4)
    registry = metrics_registry(
        Hub(), ServerCounters(), lambda: 0, more=lambda: samples(stats, outbox)
    )
    histogram = LatencyHistogram()
    histogram.observe(0.02)
    registry.register(_Latency(histogram))
    text = render(registry).decode()
    assert "roomcast_events_backlog 1.0" in text
    assert "roomcast_webhook_connection_failures_total 4.0" in text
    assert 'roomcast_webhook_attempt_seconds_bucket{le="0.025"} 1.0' in text
    assert 'roomcast_webhook_attempt_seconds_bucket{le="0.01"} 0.0' in text
