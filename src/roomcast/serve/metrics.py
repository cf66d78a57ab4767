"""Prometheus metrics of a server, read from its counters when scraped.

Nothing here runs per message: the hub and the server keep plain integer counters, and this
collector turns them into metric families only when ``/metrics`` is requested.  Each server has
its own ``CollectorRegistry`` (no process-global registry), so several servers or tests in one
process do not collide.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from roomcast.brokers.base import Broker
from roomcast.figures import Family, Figure, HistogramSeries, Sample, Series
from roomcast.hub import Hub

__all__ = ["Sample", "ServerCounters", "metrics_registry", "render"]


@dataclasses.dataclass(slots=True)
class ServerCounters:
    """What the server counts itself (the hub counts what it sends)."""

    messages_in: int = 0
    bytes_in: int = 0
    protocol_errors: int = 0
    """Client messages answered with an ErrorMessage."""
    refused_upgrades: int = 0
    """Upgrade requests answered with 4xx/5xx (bad ids, capacity, draining)."""
    heartbeat_timeouts: int = 0
    """Clients dropped because they stopped answering pings."""
    auth_failures: int = 0
    """Upgrades refused (and token refreshes rejected) for a missing or invalid token."""
    rate_limited: int = 0
    """Client messages dropped for exceeding the rate limit."""
    token_expiries: int = 0
    """Clients closed (4001) because their token expired and no new one came in time."""
    accept_errors: int = 0
    """Accepts that failed for want of descriptors (EMFILE, ENFILE) or memory."""
    refusals: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    """Actions the room rules refused, by (cause, action): both are enum values, so the
    label sets stay small (``roomcast.serve.permissions``)."""


def _task_count() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # scraped outside a running loop (tests)
        return 0


class _HubCollector(Collector):
    def __init__(
        self,
        hub: Hub,
        counters: ServerCounters,
        buffered_bytes: Callable[[], int],
    ) -> None:
        self._hub = hub
        self._counters = counters
        self._buffered_bytes = buffered_bytes

    def collect(self) -> Iterator[Metric]:
        hub, counters, stats = self._hub, self._counters, self._hub.stats
        yield GaugeMetricFamily(
            "roomcast_connections", "Open WebSocket connections.", hub.active_connections
        )
        yield GaugeMetricFamily("roomcast_rooms", "Rooms with members.", len(hub.active_rooms))
        yield GaugeMetricFamily(
            "roomcast_tasks", "asyncio tasks alive in the process.", _task_count()
        )
        yield GaugeMetricFamily(
            "roomcast_send_buffer_bytes",
            "Bytes waiting to be written to clients.",
            self._buffered_bytes(),
        )
        counter_values = (
            ("roomcast_messages_in", "Messages received from clients.", counters.messages_in),
            ("roomcast_bytes_in", "Payload bytes received from clients.", counters.bytes_in),
            ("roomcast_messages_out", "Frames handed to client connections.", stats.frames_sent),
            ("roomcast_bytes_out", "Payload bytes handed to client connections.", stats.bytes_sent),
            (
                "roomcast_slow_consumer_closes",
                "Clients closed because they read too slowly.",
                stats.slow_consumer_closes,
            ),
            (
                "roomcast_unabortable_closes",
                "Closes not written in time to a socket that could not be aborted.",
                stats.unabortable_closes,
            ),
            (
                "roomcast_dropped_frames",
                "Frames dropped for full send buffers.",
                stats.dropped_frames,
            ),
            (
                "roomcast_lost_connections",
                "Connections found gone while sending.",
                stats.lost_connections,
            ),
            (
                "roomcast_protocol_errors",
                "Client messages refused with an error.",
                counters.protocol_errors,
            ),
            (
                "roomcast_auth_failures",
                "Upgrades refused for a missing or invalid token.",
                counters.auth_failures,
            ),
            (
                "roomcast_rate_limited",
                "Client messages dropped for exceeding the rate limit.",
                counters.rate_limited,
            ),
            (
                "roomcast_token_expiries",
                "Clients closed because their token expired.",
                counters.token_expiries,
            ),
            (
                "roomcast_heartbeat_timeouts",
                "Clients dropped for not answering pings.",
                counters.heartbeat_timeouts,
            ),
            (
                "roomcast_refused_upgrades",
                "Upgrade requests refused with an HTTP error.",
                counters.refused_upgrades,
            ),
            (
                "roomcast_accept_errors",
                "Accepts that failed for want of descriptors (EMFILE, ENFILE) or memory.",
                counters.accept_errors,
            ),
        )
        for name, documentation, value in counter_values:
            yield CounterMetricFamily(name, documentation, value)
        refusals = CounterMetricFamily(
            "roomcast_refusals",
            "Joins, publishes, presence watches and history reads the room rules refused.",
            labels=("cause", "action"),
        )
        for (cause, action), value in sorted(counters.refusals.items()):
            refusals.add_metric((cause, action), value)
        yield refusals
        if hub.broker is not None:
            yield from _broker_metrics(hub.broker)


def _broker_metrics(broker: Broker) -> Iterator[Metric]:
    stats = broker.stats
    yield GaugeMetricFamily(
        "roomcast_broker_ready", "1 while connected and subscribed to the broker.", broker.ready
    )
    yield GaugeMetricFamily(
        "roomcast_broker_subscriptions", "Channels subscribed at the broker.", broker.subscriptions
    )
    counter_values = (
        ("published", "Envelopes the broker accepted.", stats.published),
        ("publish_failures", "Envelopes that could not be published.", stats.publish_failures),
        ("received", "Envelopes received from other instances.", stats.received),
        ("missed", "Envelopes published by others but never received.", stats.missed),
        ("duplicates", "Envelopes received twice and dropped.", stats.duplicates),
        ("malformed", "Messages on subscribed channels that were not envelopes.", stats.malformed),
        ("handler_errors", "Errors raised while handling envelopes.", stats.handler_errors),
        ("handler_drops", "Messages dropped for a full handler queue.", stats.handler_drops),
        ("reconnects", "Broker connections lost and re-established.", stats.reconnects),
        (
            "repaired",
            "Messages of rooms with history that did not arrive and were read from the history.",
            stats.repaired,
        ),
    )
    for name, documentation, value in counter_values:
        yield CounterMetricFamily(f"roomcast_broker_{name}", documentation, value)


class _SampleCollector(Collector):
    """Metrics read from the server when scraped."""

    def __init__(self, read: Callable[[], Iterable[Figure]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        for figure in self._read():
            if isinstance(figure, Family):
                yield _family(figure)
                continue
            kind, name, documentation, value = figure
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(name, documentation, value)


def _family(figure: Family) -> Metric:
    """A labelled family in prometheus_client's terms."""
    labels = list(figure.label_names)
    if figure.kind == "histogram":
        histogram = HistogramMetricFamily(figure.name, figure.documentation, labels=labels)
        for series in figure.series:
            assert isinstance(series, HistogramSeries)
            histogram.add_metric(list(series.labels), list(series.buckets), series.total)
        return histogram
    kind = CounterMetricFamily if figure.kind == "counter" else GaugeMetricFamily
    family = kind(figure.name, figure.documentation, labels=labels)
    for series in figure.series:
        assert isinstance(series, Series)
        family.add_metric(list(series.labels), series.value)
    return family


def metrics_registry(
    hub: Hub,
    counters: ServerCounters,
    buffered_bytes: Callable[[], int],
    more: Callable[[], Iterable[Figure]] | None = None,
) -> CollectorRegistry:
    """A registry exposing one server's metrics (``more``: further samples, read at each
    scrape)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_HubCollector(hub, counters, buffered_bytes))
    if more is not None:
        registry.register(_SampleCollector(more))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry``."""
    return generate_latest(registry)
