"""What one instance holds, and what Redis must hear of it (op codes, restore targets)."""

from __future__ import annotations

import pytest

from roomcast.brokers.lifecycle_holdings import Holdings, changed_subjects
from roomcast.brokers.lifecycle_stats import LifecycleStats
from roomcast.events.lifecycle import Change, Op


def test_only_this_instances_first_and_last_reach_redis() -> None:
    """A second connection of a user, or a second member of a room here, is not written."""
    holdings = Holdings()
    codes = [
        holdings.record(change)
        for change in (
            Change(Op.CONNECT, "c1", "alice"),
            Change(Op.CONNECT, "c2", "alice"),
            Change(Op.JOIN, "c1", "alice", "r"),
            Change(Op.JOIN, "c2", "alice", "r"),
            Change(Op.JOIN, "c3", None, "r"),
            Change(Op.PUBLISH, "c3", None, "r", data=1),
            Change(Op.LEAVE, "c1", "alice", "r"),
            Change(Op.LEAVE, "c2", "alice", "r"),
            Change(Op.LEAVE, "c3", None, "r"),
            Change(Op.LEAVE, "c3", None, "never"),
            Change(Op.DISCONNECT, "c1", "alice"),
            Change(Op.DISCONNECT, "c2", "alice"),
            Change(Op.CONNECT, "c3", None),
            Change(Op.DISCONNECT, "c3", None),
        )
    ]
    assert codes[:6] == ["c", None, "jrm", None, None, "p"]
    assert codes[6:] == [None, "lm", "lr", None, None, "d", None, None]
    assert holdings.held == set()


def test_the_target_is_what_redis_had_before_the_queue() -> None:
    """Restoring with changes still queued: their subjects as before the first of them."""
    holdings = Holdings()
    written = [Change(Op.CONNECT, "c1", "alice"), Change(Op.JOIN, "c1", "alice", "a")]
    queued = [Change(Op.LEAVE, "c1", "alice", "a"), Change(Op.JOIN, "c1", "alice", "b")]
    for change in written:
        holdings.record(change)
    codes = [holdings.record(change) for change in queued]
    assert holdings.held == {"user:alice", "room:b", "member:b\0alice"}
    target = holdings.target(zip(queued, [c for c in codes if c], strict=True))
    assert target == {"user:alice", "room:a", "member:a\0alice"}
    assert changed_subjects(Change(Op.PUBLISH, "c1", "alice", "a"), "p") == []


def test_a_join_without_a_room_is_refused() -> None:
    """A join or leave names its room: a missing one is a bug of the caller."""
    with pytest.raises(ValueError, match="needs a room"):
        Holdings().record(Change(Op.JOIN, "c1", "alice"))


def test_stats_as_samples() -> None:
    """Every counter is a sample, plus the queue as a gauge."""
    samples = LifecycleStats(recorded=3).samples(queued=2)
    assert samples[0] == ("gauge", "roomcast_lifecycle_queued", "Changes waiting", 2.0)
    assert ("counter", "roomcast_lifecycle_recorded", "Lifecycle changes recorded", 3.0) in samples
