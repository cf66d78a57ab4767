"""The event log's budget: bursts are logged, floods are sampled."""

from __future__ import annotations

import logging

import pytest

from roomcast.metrics import EventLog


def test_a_flood_of_one_kind_is_sampled_and_kinds_are_counted_apart(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first `burst` events of a kind are logged, then one in `every`, with the count;
    another kind has its own budget."""
    log = EventLog(logging.getLogger("test.events"), burst=3, every=10)
    with caplog.at_level(logging.WARNING, "test.events"):
        for n in range(25):
            log.event("flood", "client %d", n)
        log.event("other", "once")
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "flood (flood #1): client 0",
        "flood (flood #2): client 1",
        "flood (flood #3): client 2",
        "flood (flood #10): client 9",
        "flood (flood #20): client 19",
        "other (other #1): once",
    ]
