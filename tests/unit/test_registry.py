"""The registry: unit behaviour and, with hypothesis, its invariants under random sequences."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from roomcast import Connection, ConnectionStateError
from roomcast.registry import Registry, RoomChange


def test_join_and_leave_report_room_transitions() -> None:
    """The first join opens a room, the last leave empties it, repeats change nothing."""
    registry = Registry()
    a, b = Connection(object()), Connection(object())
    registry.add(a)
    registry.add(b)
    assert registry.join(a.connection_id, "r") is RoomChange.OPENED
    assert registry.join(a.connection_id, "r") is RoomChange.UNCHANGED
    assert registry.join(b.connection_id, "r") is RoomChange.JOINED
    assert registry.leave(a.connection_id, "r") is RoomChange.LEFT
    assert registry.leave(a.connection_id, "r") is RoomChange.UNCHANGED
    assert registry.leave(b.connection_id, "r") is RoomChange.EMPTIED
    assert list(registry.rooms()) == []


def test_remove_reports_emptied_rooms_and_departed_user() -> None:
    """Removing a connection says which rooms emptied and whether its user left entirely."""
    registry = Registry()
    phone, laptop = Connection(object(), "u"), Connection(object(), "u")
    assert registry.add(phone) is True
    assert registry.add(laptop) is False
    registry.join(phone.connection_id, "solo")
    registry.join(phone.connection_id, "shared")
    registry.join(laptop.connection_id, "shared")
    departure = registry.remove(phone.connection_id)
    assert departure is not None
    assert departure.emptied_rooms == ("solo",)
    assert departure.user_gone is False
    assert departure.connection.rooms == {"solo", "shared"}
    last = registry.remove(laptop.connection_id)
    assert last is not None and last.user_gone is True and last.emptied_rooms == ("shared",)
    assert registry.remove(laptop.connection_id) is None
    assert len(registry) == 0 and not list(registry.rooms())
    assert registry.user_connections("u") == {}


def test_misuse_raises_connection_state_error() -> None:
    """Adding twice, adding with rooms, and joining when unregistered are refused clearly."""
    registry = Registry()
    conn = Connection(object())
    registry.add(conn)
    with pytest.raises(ConnectionStateError, match="already registered"):
        registry.add(conn)
    with pytest.raises(ConnectionStateError, match="joins rooms after"):
        registry.add(Connection(object(), rooms={"r"}))
    with pytest.raises(ConnectionStateError, match="not registered"):
        registry.join("nope", "r")
    with pytest.raises(ConnectionStateError, match="not registered"):
        registry.leave("nope", "r")


def test_views_and_lookups() -> None:
    """Lookups by id, room and user return the registered connections."""
    registry = Registry()
    conn = Connection(object(), "u")
    registry.add(conn)
    registry.join(conn.connection_id, "r")
    assert registry.get(conn.connection_id) is conn
    assert conn.connection_id in registry
    assert list(registry) == [conn] == list(registry.connections())
    assert registry.room_members("r") == {conn.connection_id: conn}
    assert registry.user_connections("u") == {conn.connection_id: conn}
    assert registry.room_members("missing") == {} == registry.user_connections("missing")


ROOMS = st.sampled_from(["a", "b", "c", "d"])
USER_IDS = ("u1", "u2", "u3")
USERS = st.none() | st.sampled_from(USER_IDS)


class RegistryMachine(RuleBasedStateMachine):
    """Random connect/join/leave/disconnect sequences, checked against a plain model."""

    connections = Bundle("connections")

    def __init__(self) -> None:
        super().__init__()
        self.registry = Registry()
        self.model: dict[str, tuple[str | None, set[str]]] = {}  # id -> (user, rooms)

    def _room_count(self, room: str) -> int:
        return sum(room in rooms for _, rooms in self.model.values())

    def _user_count(self, user: str | None) -> int:
        return sum(u == user for u, _ in self.model.values())

    @rule(target=connections, user=USERS)
    def connect(self, user: str | None) -> Connection:
        conn = Connection(object(), user)
        first = self.registry.add(conn)
        assert first == (user is not None and self._user_count(user) == 0)
        self.model[conn.connection_id] = (user, set())
        return conn

    @rule(conn=connections, room=ROOMS)
    def join(self, conn: Connection, room: str) -> None:
        if conn.connection_id not in self.model:
            with pytest.raises(ConnectionStateError):
                self.registry.join(conn.connection_id, room)
            return
        rooms = self.model[conn.connection_id][1]
        before = self._room_count(room)
        change = self.registry.join(conn.connection_id, room)
        if room in rooms:
            assert change is RoomChange.UNCHANGED
        else:
            assert change is (RoomChange.OPENED if before == 0 else RoomChange.JOINED)
            rooms.add(room)

    @rule(conn=connections, room=ROOMS)
    def leave(self, conn: Connection, room: str) -> None:
        if conn.connection_id not in self.model:
            with pytest.raises(ConnectionStateError):
                self.registry.leave(conn.connection_id, room)
            return
        rooms = self.model[conn.connection_id][1]
        change = self.registry.leave(conn.connection_id, room)
        if room not in rooms:
            assert change is RoomChange.UNCHANGED
        else:
            rooms.discard(room)
            after = self._room_count(room)
            assert change is (RoomChange.EMPTIED if after == 0 else RoomChange.LEFT)

    @precondition(lambda self: bool(self.model))
    @rule(conn=consumes(connections))
    def disconnect(self, conn: Connection) -> None:
        departure = self.registry.remove(conn.connection_id)
        if conn.connection_id not in self.model:
            assert departure is None
            return
        user, rooms = self.model.pop(conn.connection_id)
        assert departure is not None and departure.connection is conn
        assert set(departure.emptied_rooms) == {r for r in rooms if self._room_count(r) == 0}
        assert departure.user_gone == (user is not None and self._user_count(user) == 0)

    @invariant()
    def indexes_match_model(self) -> None:
        assert len(self.registry) == len(self.model)
        expected_rooms = {r for _, rooms in self.model.values() for r in rooms}
        assert set(self.registry.rooms()) == expected_rooms
        for room in expected_rooms:
            members = self.registry.room_members(room)
            assert members, "no empty rooms"
            assert set(members) == {cid for cid, (_, rs) in self.model.items() if room in rs}
            assert all(room in conn.rooms for conn in members.values())
        assert {conn.connection_id for conn in self.registry.connections()} == set(self.model)
        expected_users = {u for u, _ in self.model.values() if u is not None}
        seen_users = {c.user_id for c in self.registry.connections() if c.user_id is not None}
        assert seen_users == expected_users
        # Every user the rules can draw, connected or not: one without connections has none
        # here.  A leftover empty entry would also show: `connect` checks that the next
        # connection of that user is reported as its first.
        for user in USER_IDS:
            devices = self.registry.user_connections(user)
            assert set(devices) == {cid for cid, (u, _) in self.model.items() if u == user}
            assert all(conn.user_id == user for conn in devices.values())
        for cid, (_, rooms) in self.model.items():
            conn = self.registry.get(cid)
            assert conn is not None and conn.rooms == rooms


RegistryMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None
)
test_registry_state_machine = RegistryMachine.TestCase


def test_indexes_give_their_tables_back_after_a_crowd_leaves() -> None:
    """After 10,000 rooms and 5,000 connections came and went, the index dicts are small
    again (a dict never shrinks by itself)."""
    import sys

    registry = Registry()
    connections = [Connection(None, f"u{n}") for n in range(5000)]
    for n, connection in enumerate(connections):
        registry.add(connection)
        registry.join(connection.connection_id, f"a{n}")
        registry.join(connection.connection_id, f"b{n}")
    peak_rooms, peak_ids = sys.getsizeof(registry._rooms), sys.getsizeof(registry._by_id)
    for connection in connections[:2500]:
        registry.leave(connection.connection_id, f"a{connections.index(connection)}")
    for connection in connections:
        registry.remove(connection.connection_id)
    assert len(registry) == 0 and not registry.rooms()
    # What is left is sized for at most COMPACT_AFTER entries, whatever the peak was.
    assert sys.getsizeof(registry._rooms) < peak_rooms / 8
    assert sys.getsizeof(registry._by_id) < peak_ids / 2
