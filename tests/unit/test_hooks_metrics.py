"""A hook's figures: outcomes, latency buckets, and samples ``/metrics`` can render."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from roomcast.hooks.decisions import Failure
from roomcast.hooks.metrics import LATENCY_BUCKETS, HookStats, Sample


def by_name(samples: list[Sample]) -> dict[str, tuple[str, float]]:
    return {name: (kind, value) for kind, name, _, value in samples}


def test_calls_add_up_every_outcome() -> None:
    """Calls are answers that allowed or refused plus failures of every kind."""
    stats = HookStats("join", allowed=3, denied=2)
    stats.failures[Failure.TIMEOUT] += 4
    stats.failures[Failure.INVALID] += 1
    assert stats.calls == 10
    samples = by_name(stats.samples())
    assert samples["roomcast_hook_join_calls"] == ("counter", 10.0)
    assert samples["roomcast_hook_join_allowed"] == ("counter", 3.0)
    assert samples["roomcast_hook_join_denied"] == ("counter", 2.0)
    assert samples["roomcast_hook_join_failures_timeout"] == ("counter", 4.0)
    assert samples["roomcast_hook_join_failures_invalid"] == ("counter", 1.0)
    assert samples["roomcast_hook_join_failures_saturated"] == ("counter", 0.0)
    assert samples["roomcast_hook_join_in_flight"] == ("gauge", 0.0)
    assert samples["roomcast_hook_join_waiting"] == ("gauge", 0.0)


def test_latency_buckets_are_cumulative() -> None:
    """Each bucket counts the calls decided within its bound (a bound itself included)."""
    stats = HookStats("connect")
    for seconds in (0.0004, 0.001, 0.002, 0.3, 7.0):
        stats.observe(seconds)
    samples = by_name(stats.samples())
    assert samples["roomcast_hook_connect_latency_le_1ms"] == ("counter", 2.0)
    assert samples["roomcast_hook_connect_latency_le_2_5ms"] == ("counter", 3.0)
    assert samples["roomcast_hook_connect_latency_le_250ms"] == ("counter", 3.0)
    assert samples["roomcast_hook_connect_latency_le_500ms"] == ("counter", 4.0)
    assert samples["roomcast_hook_connect_latency_le_5000ms"] == ("counter", 4.0)
    assert stats.latency_counts[-1] == 1  # over the last bound
    assert sum(stats.latency_counts) == 5
    assert abs(samples["roomcast_hook_connect_latency_seconds_sum"][1] - 7.3034) < 1e-9
    assert len([n for n in samples if "_latency_le_" in n]) == len(LATENCY_BUCKETS)


class _Samples(Collector):
    def __init__(self, samples: list[Sample]) -> None:
        self._samples = samples

    def collect(self) -> Iterator[Metric]:
        for kind, name, documentation, value in self._samples:
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(name, documentation, value)


def test_samples_render_as_prometheus_text() -> None:
    """The samples are valid metric names and render as serve's collector renders them."""
    stats = HookStats("publish", allowed=1)
    stats.observe(0.004)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Samples(stats.samples()))
    text = generate_latest(registry).decode()
    assert "roomcast_hook_publish_allowed_total 1.0" in text
    assert "roomcast_hook_publish_latency_le_5ms_total 1.0" in text
    assert "roomcast_hook_publish_in_flight 0.0" in text
