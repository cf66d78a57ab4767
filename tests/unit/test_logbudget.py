"""Log budgets: bursts are logged, floods are sampled, failures are summed."""

from __future__ import annotations

import logging

import pytest

from roomcast.logbudget import EventLog, FailureTally


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


def test_failures_are_logged_as_sums_that_add_up(caplog: pytest.LogCaptureFixture) -> None:
    """The first failure is logged at once; the next ones are summed at most once per
    interval, and flush() logs the rest: the counts in the log add up to every failure."""
    now = [0.0]
    tally = FailureTally(logging.getLogger("test.tally"), "thing(s) failed", 10.0, lambda: now[0])
    with caplog.at_level(logging.WARNING, "test.tally"):
        tally.add("down")
        for n in range(1, 1060):
            now[0] = n / 100  # 10.59 s of failures
            tally.add("down")
        tally.flush()
        tally.flush()  # nothing more to say
        tally.add("again", 3)
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "1 thing(s) failed: down",
        "1000 thing(s) failed: down",
        "59 thing(s) failed: down",
        "3 thing(s) failed: again",
    ]
