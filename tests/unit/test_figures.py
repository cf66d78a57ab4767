"""Figures with labels and histograms render as Prometheus families in /metrics."""

from __future__ import annotations

from roomcast.figures import Family, Figure, HistogramSeries, Series
from roomcast.hub import Hub
from roomcast.serve.metrics import ServerCounters, metrics_registry, render


def test_labelled_counters_and_histograms_render() -> None:
    """A counter per label set gets _total; a histogram its buckets, _count and _sum."""
    figures: list[Figure] = [
        ("gauge", "roomcast_example_plain", "A plain gauge.", 3),
        Family(
            "counter",
            "roomcast_hook_calls",
            "Hook calls by outcome.",
            ("hook", "outcome"),
            (Series(("join", "allowed"), 5), Series(("join", "timeout"), 1)),
        ),
        Family(
            "histogram",
            "roomcast_hook_latency_seconds",
            "Hook latency.",
            ("hook",),
            (HistogramSeries(("join",), (("0.001", 2), ("0.01", 5), ("+Inf", 6)), 0.25),),
        ),
    ]
    text = render(metrics_registry(Hub(), ServerCounters(), lambda: 0, more=lambda: figures))
    lines = set(text.decode().splitlines())
    assert "roomcast_example_plain 3.0" in lines
    assert 'roomcast_hook_calls_total{hook="join",outcome="allowed"} 5.0' in lines
    assert 'roomcast_hook_calls_total{hook="join",outcome="timeout"} 1.0' in lines
    assert 'roomcast_hook_latency_seconds_bucket{hook="join",le="0.01"} 5.0' in lines
    assert 'roomcast_hook_latency_seconds_count{hook="join"} 6.0' in lines
    assert 'roomcast_hook_latency_seconds_sum{hook="join"} 0.25' in lines
    assert "# TYPE roomcast_hook_latency_seconds histogram" in lines
