"""A hook's figures: outcomes, latency buckets, and labelled families ``/metrics`` renders."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from roomcast.figures import Family, HistogramSeries, Series
from roomcast.hooks.decisions import Failure
from roomcast.hooks.metrics import LATENCY_BUCKETS, HookStats, hook_families
from roomcast.hub import Hub
from roomcast.serve.metrics import ServerCounters, metrics_registry


def family(families: list[Family], name: str) -> Family:
    return next(f for f in families if f.name == name)


def values(found: Family) -> dict[tuple[str, ...], float]:
    return {s.labels: s.value for s in found.series if isinstance(s, Series)}


def test_calls_add_up_every_outcome() -> None:
    """Calls are answers that allowed or refused plus failures of every kind."""
    stats = HookStats("join", allowed=3, denied=2)
    stats.failures[Failure.TIMEOUT] += 4
    stats.failures[Failure.INVALID] += 1
    assert stats.calls == 10
    families = hook_families([stats])
    calls = values(family(families, "roomcast_hook_calls"))
    assert calls == {("join", "allowed"): 3, ("join", "denied"): 2, ("join", "failed"): 5}
    failures = values(family(families, "roomcast_hook_failures"))
    assert failures[("join", "timeout")] == 4
    assert failures[("join", "invalid")] == 1
    assert failures[("join", "saturated")] == 0
    assert values(family(families, "roomcast_hook_in_flight")) == {("join",): 0}
    assert values(family(families, "roomcast_hook_waiting")) == {("join",): 0}


def test_latency_buckets_are_cumulative() -> None:
    """Each bucket counts the calls decided within its bound (a bound itself included)."""
    stats = HookStats("connect")
    for seconds in (0.0004, 0.001, 0.002, 0.3, 7.0):
        stats.observe(seconds)
    (series,) = family(hook_families([stats]), "roomcast_hook_latency_seconds").series
    assert isinstance(series, HistogramSeries)
    buckets = dict(series.buckets)
    assert buckets["0.001"] == 2
    assert buckets["0.0025"] == 3
    assert buckets["0.25"] == 3
    assert buckets["0.5"] == 4
    assert buckets["5"] == 4
    assert buckets["+Inf"] == 5
    assert len(series.buckets) == len(LATENCY_BUCKETS) + 1
    assert abs(series.total - 7.3034) < 1e-9


def test_families_render_as_prometheus_text() -> None:
    """One family per figure with a series per hook, rendered by serve's collector."""
    publish, connect = HookStats("publish", allowed=1), HookStats("connect", denied=2)
    publish.observe(0.004)
    connect.peak_in_flight = 7
    registry: CollectorRegistry = metrics_registry(
        Hub(), ServerCounters(), lambda: 0, lambda: hook_families([publish, connect])
    )
    text = generate_latest(registry).decode()
    assert 'roomcast_hook_calls_total{hook="publish",outcome="allowed"} 1.0' in text
    assert 'roomcast_hook_calls_total{hook="connect",outcome="denied"} 2.0' in text
    assert 'roomcast_hook_latency_seconds_bucket{hook="publish",le="0.005"} 1.0' in text
    assert 'roomcast_hook_latency_seconds_count{hook="publish"} 1.0' in text
    assert 'roomcast_hook_in_flight{hook="publish"} 0.0' in text
    assert 'roomcast_hook_peak_in_flight{hook="connect"} 7.0' in text
