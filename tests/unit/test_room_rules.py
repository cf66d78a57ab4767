"""RoomRules, the manager's view of the rules, without sockets or Redis (the same cases through
real servers are in tests/integration/test_room_rules.py)."""

from __future__ import annotations

import pytest

from roomcast.auth import AuthenticationError, Identity
from roomcast.fastapi.room_rules import RoomRefused, RoomRules, revoked_message
from roomcast.rules import Action, Cause, Namespaces, Refusal, Rules

RULES = Rules(Namespaces.from_mapping({"chat": {"max_rooms_per_connection": 1}}))


def identity(rooms: object = None) -> Identity:
    claims: dict[str, object] = {"sub": "ann"}
    if rooms is not None:
        claims["rooms"] = rooms
    return Identity("ann", claims, None)


def test_without_rules_everything_is_allowed_and_no_claim_is_read() -> None:
    """No rules: a malformed claim is not even parsed, and nothing is refused."""
    room_rules = RoomRules(None)
    who = room_rules.who(identity("not a claim"))
    assert who is None
    room_rules.remember("c1", who)
    assert room_rules.of("c1") is None
    assert room_rules.check("c1", "inbox#bob", Action.PUBLISH, ()) is None
    assert room_rules.join_refusal(None, "inbox#bob", ()) is None
    assert room_rules.max_members("chat:a") == 0
    assert room_rules.renew("c1", None, {"chat:a"}) is None


def test_a_malformed_claim_is_a_401() -> None:
    """The claim's error becomes an AuthenticationError with status 401 and its message."""
    with pytest.raises(AuthenticationError, match="'rooms' claim") as refused:
        RoomRules(RULES).who(identity({"chat": "join"}))
    assert refused.value.status == 401


def test_unknown_connections_are_refused_not_waved_through() -> None:
    """With rules, a connection the manager never registered may do nothing."""
    room_rules = RoomRules(RULES)
    assert room_rules.check("nobody", "lobby", Action.JOIN, ()) == Refusal(
        Cause.NOT_GRANTED, "not connected here"
    )
    assert room_rules.join_refusal(None, "lobby", ()) is not None


def test_the_per_connection_cap_counts_rooms_of_the_same_namespace() -> None:
    """max_rooms_per_connection counts the connection's rooms of the room's namespace only,
    and a room the connection is in already is no new join."""
    room_rules = RoomRules(RULES)
    who = room_rules.who(identity({"*": ["join"]}))
    refusal = room_rules.join_refusal(who, "chat:b", {"chat:a", "lobby"})
    assert refusal is not None and refusal.cause is Cause.TOO_MANY_ROOMS
    assert refusal.message == "at most 1 rooms of chat per connection"
    assert room_rules.join_refusal(who, "chat:a", {"chat:a"}) is None
    assert room_rules.join_refusal(who, "other", {"chat:a", "lobby"}) is None


def test_full_and_refused() -> None:
    """A room is full at its cap (0: never); RoomRefused carries the cause in its message."""
    assert RoomRules.full(0, 10**6) is None
    assert RoomRules.full(2, 1) is None
    full = RoomRules.full(2, 2)
    assert full is not None
    error = RoomRefused("stage:x", full)
    assert (error.status, error.room, error.cause) == (403, "stage:x", Cause.ROOM_FULL)
    assert str(error) == "the room is full (2 connections) (room_full)"
    assert error.reason == "the room is full (2 connections)"


def test_renew_replaces_the_view_and_lists_rooms_to_leave() -> None:
    """After a refresh the new claim decides; the revoked rooms come sorted, in the message
    roomcast serve sends."""
    room_rules = RoomRules(RULES)
    room_rules.remember("c1", room_rules.who(identity({"*": ["*"]})))
    narrower = room_rules.who(identity({"chat:a": ["join"]}))
    assert room_rules.renew("c1", narrower, {"lobby", "chat:a", "inbox#ann", "b"}) == {
        "type": "revoked",
        "rooms": ["b", "lobby"],
        "cause": "not_granted",
        "reason": "the refreshed token no longer grants these rooms; they were left",
    }
    assert room_rules.of("c1") is narrower
    assert room_rules.renew("c1", narrower, {"chat:a"}) is None
    assert revoked_message(["b"], Cause.PERSONAL_ROOM)["cause"] == "personal_room"
    room_rules.forget("c1")
    assert room_rules.of("c1") is None
