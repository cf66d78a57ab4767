"""The lifecycle rules: first arrivals and last departures, the debounce window, seq."""

from __future__ import annotations

from roomcast.events.lifecycle import Change, LifecycleState, Op, next_seq
from roomcast.events.schema import Kind, LifecycleEvent


def kinds(events: list[LifecycleEvent]) -> list[tuple[str, str | None, str | None]]:
    return [(e.kind.value, e.user, e.room) for e in events]


def connect(c: str, user: str | None, **kw: object) -> Change:
    return Change(Op.CONNECT, c, user, **kw)  # type: ignore[arg-type]


def join(c: str, user: str | None, room: str) -> Change:
    return Change(Op.JOIN, c, user, room)


def leave(c: str, user: str | None, room: str) -> Change:
    return Change(Op.LEAVE, c, user, room)


def disconnect(c: str, user: str | None, code: int = 1000) -> Change:
    return Change(Op.DISCONNECT, c, user, reason="closed", code=code)


def test_first_and_last_of_each_subject_are_events() -> None:
    """A second connection of a user, or a second member of a room, emits nothing."""
    state = LifecycleState("i", debounce=0)
    out = []
    for change in (
        connect("c1", "alice"),
        connect("c2", "alice"),
        join("c1", "alice", "r"),
        join("c2", "alice", "r"),
        leave("c1", "alice", "r"),
        leave("c2", "alice", "r"),
        disconnect("c1", "alice"),
        disconnect("c2", "alice", code=1001),
    ):
        out += state.apply(change, 10.0)
    assert kinds(out) == [
        ("connect", "alice", None),
        ("occupied", None, "r"),
        ("join", "alice", "r"),
        ("leave", "alice", "r"),
        ("vacated", None, "r"),
        ("disconnect", "alice", None),
    ]
    assert out[-1].code == 1001 and out[-1].connection == "c2" and out[-1].reason == "closed"
    assert state.waiting == 0


def test_a_comeback_within_the_window_emits_nothing() -> None:
    """A reconnect and rejoin before the window ends cancel disconnect, leave and vacated."""
    state = LifecycleState("i", debounce=5)
    state.apply(connect("c1", "alice"), 0)
    state.apply(join("c1", "alice", "r"), 0)
    quiet = state.apply(leave("c1", "alice", "r"), 1) + state.apply(disconnect("c1", "alice"), 1)
    assert quiet == [] and state.waiting == 3 and state.next_due() == 6
    back = state.apply(connect("c2", "alice"), 3) + state.apply(join("c2", "alice", "r"), 3)
    assert back == [] and state.waiting == 0
    assert state.due(100) == []


def test_waiting_events_come_out_in_the_order_of_their_causes() -> None:
    """After the window, a connection's leaves precede its disconnect; time is the cause's."""
    state = LifecycleState("i", debounce=5)
    state.apply(connect("c1", "alice"), 0)
    for room in ("a", "b"):
        state.apply(join("c1", "alice", room), 0)
    for room in ("a", "b"):
        state.apply(leave("c1", "alice", room), 1)
    state.apply(disconnect("c1", "alice"), 1)
    assert state.due(5.9) == []
    out = state.due(6)
    assert kinds(out) == [
        ("leave", "alice", "a"),
        ("vacated", None, "a"),
        ("leave", "alice", "b"),
        ("vacated", None, "b"),
        ("disconnect", "alice", None),
    ]
    assert {e.time for e in out} == {1}
    seqs = [e.seq for e in out if e.user == "alice"]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_a_comeback_without_the_room_still_leaves_it() -> None:
    """Reconnecting cancels the disconnect, not the leave of a room not rejoined."""
    state = LifecycleState("i", debounce=5)
    state.apply(connect("c1", "alice"), 0)
    state.apply(join("c1", "alice", "r"), 0)
    state.apply(leave("c1", "alice", "r"), 1)
    state.apply(disconnect("c1", "alice"), 1)
    assert state.apply(connect("c2", "alice"), 2) == []
    assert kinds(state.due(6)) == [("leave", "alice", "r"), ("vacated", None, "r")]


def test_clients_without_a_user_count_for_rooms_only() -> None:
    """An anonymous client occupies a room and publishes, but has no user events."""
    state = LifecycleState("i", debounce=0)
    out = state.apply(connect("c1", None), 0) + state.apply(join("c1", None, "r"), 0)
    out += state.apply(Change(Op.PUBLISH, "c1", None, "r", data={"x": 1}), 0)
    assert kinds(out) == [("occupied", None, "r"), ("publish", None, "r")]
    assert out[-1].data == {"x": 1}


def test_ids_are_unique_and_seq_grows_per_subject() -> None:
    """Every event has its own id; a subject's seq grows even across forgetting it."""
    state = LifecycleState("i", debounce=0)
    out = []
    for t in (1.0, 1.0, 1.0, 2.0):
        out += state.apply(connect("c", "alice"), t) + state.apply(disconnect("c", "alice"), t)
    assert len({e.id for e in out}) == len(out)
    seqs = [e.seq for e in out]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_next_seq() -> None:
    """At least the clock in µs-of-ms, and one more than the last."""
    assert next_seq(None, 1.5) == 1_500_000
    assert next_seq(1_500_000, 1.5) == 1_500_001
    assert next_seq(1_000, 1.5) == 1_500_000


def test_connect_carries_the_hooks_data() -> None:
    """What a connect hook returned for the client rides on its connect event."""
    state = LifecycleState("i", debounce=0)
    (event,) = state.apply(connect("c", "alice", data={"plan": "pro"}), 0)
    assert event.kind is Kind.CONNECT and event.data == {"plan": "pro"}


def test_idle_subjects_are_forgotten_once_the_clock_passed_them() -> None:
    """State for a user who left is kept only until its seq is below the clock's floor."""
    state = LifecycleState("i", debounce=0)
    state.apply(connect("c", "alice"), 1.0)
    state.apply(disconnect("c", "alice"), 1.0)
    state.due(1.0)
    assert state._seq  # still within the millisecond
    state.due(1.002)
    assert not state._seq and not state._idle
