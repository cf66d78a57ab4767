"""Figures for ``/metrics`` without a metrics library: what pure modules hand a face to show.

The hub, the hooks, the lifecycle stores and the dispatcher count with plain integers; a face
that serves ``/metrics`` asks for their figures when scraped and renders them (``roomcast
serve``: ``roomcast.serve.metrics``, with prometheus_client).  Two shapes:

- ``Sample``: ``(kind, name, documentation, value)``, one unlabelled counter or gauge;
- ``Family``: a counter, gauge or histogram with labels, e.g. calls per hook and outcome,
  or a latency histogram per hook (``series`` then holds cumulative bucket counts).

Pure: no I/O, no import of a metrics library.
"""

from __future__ import annotations

import dataclasses

__all__ = ["Family", "Figure", "HistogramSeries", "Sample", "Series"]

Sample = tuple[str, str, str, float]
"""``(kind, name, documentation, value)``: kind is "gauge" or "counter"."""


@dataclasses.dataclass(frozen=True, slots=True)
class Series:
    """One labelled value of a counter or gauge family."""

    labels: tuple[str, ...]
    value: float


@dataclasses.dataclass(frozen=True, slots=True)
class HistogramSeries:
    """One labelled histogram: cumulative counts per upper bound (the last is ``+Inf``), and
    the sum of what was observed."""

    labels: tuple[str, ...]
    buckets: tuple[tuple[str, float], ...]
    total: float


@dataclasses.dataclass(frozen=True, slots=True)
class Family:
    """A metric with labels.

    Attributes:
        kind: "counter", "gauge" or "histogram".
        name: Without the ``_total`` of a counter (the renderer adds it).
        documentation: What it counts.
        label_names: The labels, in the order of each series' ``labels``.
        series: ``Series`` for a counter or gauge, ``HistogramSeries`` for a histogram.
    """

    kind: str
    name: str
    documentation: str
    label_names: tuple[str, ...]
    series: tuple[Series, ...] | tuple[HistogramSeries, ...]


Figure = Sample | Family
"""What a module hands ``/metrics``."""
