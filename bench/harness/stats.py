"""The statistics the reports use: medians, delivery percentiles, GC deltas, fits, ratios."""

from __future__ import annotations

import math
import statistics
from array import array
from collections.abc import Sequence
from typing import Any

__all__ = [
    "gc_delta",
    "handshake_ms",
    "latency_summary",
    "linear_fit",
    "median",
    "percentile_at",
    "ratio",
]


def median(values: Sequence[float]) -> float:
    """The median; NaN for no values."""
    return statistics.median(values) if values else math.nan


def ratio(a: float, b: float) -> float:
    """``a / b``; NaN when ``b`` is zero or either is NaN."""
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def percentile_at(sorted_latencies: Sequence[float], fraction: float, expected: int) -> float:
    """Seconds until ``fraction`` of the ``expected`` clients had the message; inf if never."""
    needed = max(1, math.ceil(fraction * expected))
    if needed > len(sorted_latencies):
        return math.inf
    return sorted_latencies[needed - 1]


def handshake_ms(sorted_seconds: Sequence[float]) -> dict[str, float]:
    """p50, p99 and max of the handshake times, in ms."""
    count = len(sorted_seconds)
    return {
        key: percentile_at(sorted_seconds, q, count) * 1000
        for key, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))
    }


def latency_summary(
    reports: list[dict[int, tuple[float, bytes]]], first_seq: int, count: int, expected: int
) -> dict[str, Any]:
    """Per message: time until 50/99/100 % of the ``expected`` clients had it; medians.

    ``reports`` are the workers' answers to ``report``: per sequence number, the send time and
    the sorted latencies (an ``array("d")``'s bytes)."""
    per_message: dict[str, list[float]] = {"p50": [], "p99": [], "p100": []}
    received = 0
    for seq in range(first_seq, first_seq + count):
        latencies: list[float] = []
        for report in reports:
            if seq in report:
                latencies.extend(array("d", report[seq][1]))
        latencies.sort()
        received += len(latencies)
        per_message["p50"].append(percentile_at(latencies, 0.50, expected))
        per_message["p99"].append(percentile_at(latencies, 0.99, expected))
        per_message["p100"].append(percentile_at(latencies, 1.00, expected))
    return {
        "received": received,
        "median_ms": {k: median(v) * 1000 for k, v in per_message.items()},
        "worst_ms": {k: max(v, default=math.nan) * 1000 for k, v in per_message.items()},
    }


def gc_delta(before: dict[str, Any], after: dict[str, Any]) -> tuple[list[int], float]:
    """Cyclic-GC passes per generation, and seconds spent in them, between two stats
    (``GcClock.snapshot``'s fields)."""
    passes = [b - a for a, b in zip(before["gc_collections"], after["gc_collections"], strict=True)]
    return passes, sum(after["gc_seconds"]) - sum(before["gc_seconds"])


def linear_fit(points: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    """(slope, intercept) of ``y = intercept + slope x``, least squares; None for fewer than
    two points or a single x."""
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / var
    return slope, mean_y - slope * mean_x
