"""``roomcast serve``'s lifecycle-event options and wiring, without sockets: which settings
are refused, what the start-up line says, close frames read, the connect hook's data passed
on, the dispatcher's figures, and a histogram merged across ``--workers``."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from roomcast.connection import Connection
from roomcast.events.lifecycle import Change, Op
from roomcast.events.memory import MemoryOutbox
from roomcast.events.stats import DispatcherStats, LatencyHistogram, figures
from roomcast.figures import Family, HistogramSeries, Series
from roomcast.hub import Hub
from roomcast.serve.config import (
    ServerConfig,
    lifecycle_enabled,
    refuse_contradictions,
    webhook_secrets,
)
from roomcast.serve.lifecycle_events import CONNECT_DATA, LifecycleEvents, client_close
from roomcast.serve.metrics import ServerCounters, metrics_registry, render
from roomcast.serve.options import OptionError
from roomcast.serve.startup import startup_lines
from roomcast.serve.workers import WorkerIdentity, WorkerView

URL = "https://backend.example/hooks?token=t0p"


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"webhook_url": "ftp://x/hooks", "webhook_secret": "k"}, "--webhook-url must be http"),
        ({"webhook_url": "backend/hooks", "webhook_secret": "k"}, "--webhook-url must be http"),
        ({"webhook_url": URL}, "ROOMCAST_WEBHOOK_SECRET"),
        ({"webhook_url": URL, "webhook_secret": " , "}, "ROOMCAST_WEBHOOK_SECRET"),
        (
            {"webhook_url": URL, "webhook_secret": "k", "lifecycle_events": False},
            "nothing to send",
        ),
        ({"lifecycle_events": True}, "needs --redis-url"),
    ],
)
def test_contradictions_are_refused_on_one_line(settings: dict[str, Any], fragment: str) -> None:
    """A bad URL, a URL without a key, events off with a URL, events on with nowhere to go."""
    with pytest.raises(OptionError, match=fragment) as caught:
        refuse_contradictions(ServerConfig(**settings))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("settings", "enabled"),
    [
        ({}, False),
        ({"webhook_url": URL, "webhook_secret": "k"}, True),
        ({"lifecycle_events": True, "redis_url": "redis://r:6379"}, True),
        ({"lifecycle_events": False}, False),
    ],
)
def test_settings_that_start(settings: dict[str, Any], enabled: bool) -> None:
    """Events default to on with a webhook URL; on without one they go to the Redis stream."""
    config = ServerConfig(**settings)
    refuse_contradictions(config)
    assert lifecycle_enabled(config) is enabled


def test_the_secret_is_a_comma_separated_list_current_first() -> None:
    """Spaces and empty parts are ignored: the first key signs, the others are kept."""
    assert webhook_secrets(ServerConfig(webhook_secret=" new , old,")) == [b"new", b"old"]


def _lifecycle_line(**settings: Any) -> str:
    lines = startup_lines(ServerConfig(**settings), 8000, None)
    (line,) = [line for line in lines if line.startswith("lifecycle events:")]
    return line


def test_the_start_up_line_says_where_events_go_and_shows_no_secret() -> None:
    """Off, to a webhook from memory or from Redis, or into the stream; the URL loses its
    query (a token?) and credentials, and the secret is never shown."""
    assert "off" in _lifecycle_line()
    memory = _lifecycle_line(webhook_url=URL, webhook_secret="k3y")
    assert "https://backend.example/hooks" in memory and "memory" in memory
    assert "t0p" not in memory
    redis = _lifecycle_line(
        webhook_url="http://u:pw@h:81/x", webhook_secret="k", redis_url="redis://r:6379"
    )
    assert "http://h:81/x" in redis and "{ws:life}:events" in redis and "pw" not in redis
    stream = _lifecycle_line(lifecycle_events=True, redis_url="redis://r", channel_prefix="p")
    assert "{p:life}:events" in stream and "webhook" in stream
    every = " ".join(startup_lines(ServerConfig(webhook_url=URL, webhook_secret="k3y"), 1, None))
    assert "k3y" not in every and "t0p" not in every


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", (1005, "closed by the client")),
        (b"\x03\xe8", (1000, "closed by the client")),
        (b"\x10\x04bye", (4100, "bye")),
        (b"\x03\xe9\xff", (1001, "\ufffd")),
    ],
)
def test_a_clients_close_frame(payload: bytes, expected: tuple[int, str]) -> None:
    """The code and reason a client closed with, read from its close frame."""
    assert client_close(payload) == expected


class _Store:
    def __init__(self) -> None:
        self.changes: list[Change] = []

    def record(self, change: Change) -> None:
        self.changes.append(change)


async def test_the_connect_event_carries_the_connect_hooks_data() -> None:
    """What the connect hook left under ``roomcast.connect_data`` goes into the connect."""
    events = LifecycleEvents(ServerConfig(webhook_url=URL, webhook_secret="k"), Hub(), "i1")
    assert events.feed is not None
    store = _Store()
    events.feed.store = store  # type: ignore[assignment]
    connection = Connection(None, "ann")
    connection.metadata[CONNECT_DATA] = {"plan": "pro"}
    events.connected(connection)
    events.closing(connection, 4001, "token expired")
    (change,) = store.changes
    assert (change.op, change.user, change.data) == (Op.CONNECT, "ann", {"plan": "pro"})


async def test_off_every_call_is_a_no_op() -> None:
    """Without events nothing is wired: no feed, no figures, start and stop do nothing."""
    events = LifecycleEvents(ServerConfig(), Hub(), "i1")
    connection = Connection(None, "ann")
    events.connected(connection)
    events.closing(connection, 1000, "")
    await events.start()
    assert events.figures() == [] and events.published is None
    await events.stop()


def test_the_dispatchers_figures() -> None:
    """Failures are one family labelled by kind, the latency a histogram; the flat failure
    counters are not repeated."""
    stats = DispatcherStats(timeouts=2, connection_failures=3, status_failures=4)
    latency = LatencyHistogram((0.1, 1.0))
    latency.observe(0.05)
    latency.observe(0.5)
    out = figures(stats, latency, MemoryOutbox())
    names = [f.name if isinstance(f, Family) else f[1] for f in out]
    assert "roomcast_webhook_timeouts" not in names and "roomcast_events_backlog" in names
    (failures,) = [f for f in out if isinstance(f, Family) and f.kind == "counter"]
    assert failures.series == (
        Series(("timeout",), 2),
        Series(("connection",), 3),
        Series(("status",), 4),
    )
    (histogram,) = [f for f in out if isinstance(f, Family) and f.kind == "histogram"]
    (series,) = histogram.series
    assert isinstance(series, HistogramSeries)
    assert series.total == pytest.approx(0.55)
    assert list(series.buckets) == [("0.1", 1), ("1.0", 2), ("+Inf", 2)]


async def test_a_memory_outbox_drains() -> None:
    """``drained`` is true at once when empty, false after the wait while entries stay, true
    once they are acknowledged."""
    outbox = MemoryOutbox()
    assert await outbox.drained(0)
    event_ids = outbox.append([_event()])
    assert not await outbox.drained(0.01)
    waiting = asyncio.ensure_future(outbox.drained(5))
    await outbox.ack(event_ids)
    assert await waiting


def _event() -> Any:
    from roomcast.events.schema import Kind, LifecycleEvent

    return LifecycleEvent(Kind.OCCUPIED, "e1", 1.0, 1, room="r")


class _Histogram(Collector):
    def collect(self) -> Any:
        family = HistogramMetricFamily("roomcast_webhook_latency_seconds", "Latency.")
        family.add_metric([], [("0.1", 1), ("+Inf", 3)], 2.5)
        yield family


def test_workers_merge_a_histogram_into_a_valid_one() -> None:
    """Under --workers a histogram keeps its type, each worker's buckets carry its label, and
    the text parses."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Histogram())
    view = WorkerView(WorkerIdentity(0, 2, "g"), clock=lambda: 0.0)
    other = WorkerView(WorkerIdentity(1, 2, "g"), clock=lambda: 0.0)
    view.received(1, other.snapshot(registry, None))
    (family,) = [
        f
        for f in text_string_to_metric_families(view.render(registry).decode())
        if f.name == "roomcast_webhook_latency_seconds"
    ]
    assert family.type == "histogram"
    buckets = {
        (s.labels["worker"], s.labels["le"]): s.value for s in family.samples if "le" in s.labels
    }
    assert buckets == {("0", "0.1"): 1, ("0", "+Inf"): 3, ("1", "0.1"): 1, ("1", "+Inf"): 3}
    sums = [s for s in family.samples if s.name.endswith("_sum")]
    assert sorted(s.labels["worker"] for s in sums) == ["0", "1"]


def test_a_servers_registry_renders_the_families() -> None:
    """The server's own registry renders a labelled family and a histogram from figures."""
    latency = LatencyHistogram((1.0,))
    latency.observe(0.5)
    registry = metrics_registry(
        Hub(),
        ServerCounters(),
        lambda: 0,
        lambda: figures(DispatcherStats(), latency, MemoryOutbox()),
    )
    text = render(registry).decode()
    assert 'roomcast_webhook_latency_seconds_bucket{le="1.0"} 1.0' in text
    assert 'roomcast_webhook_failures_total{kind="timeout"} 0.0' in text


def test_the_options_have_a_group_of_their_own() -> None:
    """The lifecycle options appear together in ``--help``, under "lifecycle events"."""
    names = {
        "webhook_url",
        "webhook_secret",
        "lifecycle_events",
        "events_debounce",
        "events_max",
        "webhook_timeout",
    }
    groups = {f.metadata["option"][3] for f in dataclasses.fields(ServerConfig) if f.name in names}
    assert groups == {"lifecycle events"}
