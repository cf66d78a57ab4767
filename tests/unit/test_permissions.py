"""The room rules as ``roomcast serve`` applies them, without a socket: what is kept per
client, the limits, the counts, and what a refresh takes away."""

from __future__ import annotations

import logging
from typing import Any

from roomcast.auth import Identity
from roomcast.hub import Hub
from roomcast.logbudget import EventLog
from roomcast.rules import Action, Cause, Namespaces, Rules, Who
from roomcast.serve.config import ServerConfig
from roomcast.serve.metrics import ServerCounters
from roomcast.serve.permissions import ANONYMOUS, WHO, Permissions, close_code
from tests.unit.test_session import Inbox, client


def permissions(
    namespaces: dict[str, Any] | None = None,
) -> tuple[Permissions, Hub, ServerCounters]:
    rules = None if namespaces is None else Rules(Namespaces.from_mapping(namespaces))
    hub, counters = Hub(), ServerCounters()
    events = EventLog(logging.getLogger("test"))
    return Permissions(ServerConfig(rules=rules), hub, counters, events), hub, counters


def test_only_what_says_more_than_the_user_id_is_kept() -> None:
    """A token without the claim keeps nothing; a claim keeps a Who; no token: the shared
    anonymous Who."""
    allowed, _, _ = permissions()
    assert allowed.who(Identity("ann")) is None
    assert allowed.who(None) is ANONYMOUS
    kept = allowed.who(Identity("ann", {"rooms": {"chat:*": ["join"]}}))
    assert kept is not None and kept.user_id == "ann" and kept.capabilities is not None


def test_the_claim_name_is_the_servers() -> None:
    """``capabilities_claim`` names the claim even when the rules were built with another."""
    config = ServerConfig(capabilities_claim="perms", rules=Rules(claim="rooms"))
    chosen = Permissions(config, Hub(), ServerCounters(), EventLog(logging.getLogger("t")))
    assert chosen.rules.claim == "perms"
    assert chosen.who(Identity("ann", {"rooms": {}})) is None


def test_refusals_are_counted_by_cause_and_action() -> None:
    """Each refusal adds one to its (cause, action); allowed actions count nothing."""
    rules, hub, counters = permissions({"feed": {"publish": False}})
    ann = client(hub, "ann")
    assert rules.check(ann.connection, "feed:x", Action.JOIN) is None
    for _ in range(2):
        refusal = rules.check(ann.connection, "feed:x", Action.PUBLISH)
        assert refusal is not None and close_code(refusal) == 1008
    assert rules.check(ann.connection, "inbox#bob", Action.JOIN) is not None
    assert counters.refusals == {
        ("namespace_forbids", "publish"): 2,
        ("personal_room", "join"): 1,
    }


def test_limits_count_this_namespaces_rooms_and_this_processs_members() -> None:
    """max_members counts the room's local connections; max_rooms_per_connection the
    connection's rooms of that namespace (the server's $ rooms and a room it is in excepted)."""
    rules, hub, _ = permissions(
        {"duo": {"max_members": 1}, "chat": {"max_rooms_per_connection": 1}}
    )
    ann, bob = client(hub, "ann"), client(hub, "bob")
    hub.join(ann.connection, "duo:x")
    full = rules.check(bob.connection, "duo:x", Action.JOIN)
    assert full is not None and full.cause is Cause.ROOM_FULL and close_code(full) == 1013
    assert rules.check(ann.connection, "duo:x", Action.JOIN) is None  # (already in)
    for room in ("chat:a", "$presence:chat:a", "other"):
        hub.join(ann.connection, room)
    many = rules.check(ann.connection, "chat:b", Action.JOIN)
    assert many is not None and many.cause is Cause.TOO_MANY_ROOMS
    assert rules.check(ann.connection, "chat:a", Action.JOIN) is None
    assert rules.check(ann.connection, "chat:b", Action.PUBLISH) is None  # (joins only)


def test_joining_the_servers_rooms() -> None:
    """$stats when served; $presence:R when presence is served, by the rules of R's presence
    and, for members-only presence, after joining R."""
    rules, hub, _ = permissions({"open": {"presence_for": "anyone"}, "quiet": {"presence": False}})
    ann = client(hub, "ann").connection

    def refusal(room: str, *, stats: bool = True, presence: bool = True) -> object:
        found = rules.join_refusal(ann, room, stats=stats, presence=presence)
        return found if found is None or isinstance(found, str) else found.cause

    assert (
        refusal("$stats") is None and refusal("$stats", stats=False) == "room '$stats' is reserved"
    )
    assert refusal("$other") == "room '$other' is reserved"
    assert refusal("$presence:open:x", presence=False) == "room '$presence:open:x' is reserved"
    assert refusal("$presence:$stats") == "the presence of '$stats' is not served"
    assert refusal("$presence:open:x") is None
    assert refusal("$presence:x") == "join 'x' first"
    assert refusal("$presence:quiet:x") is Cause.NAMESPACE_FORBIDS
    assert refusal("inbox#bob") is Cause.PERSONAL_ROOM
    assert rules.may_replay(ann, "$presence:x") and rules.may_replay(ann, "x")


def test_a_refresh_that_takes_nothing_away_says_nothing() -> None:
    """Same grants: no revoked message; a token without the claim: nothing kept."""
    rules, hub, _ = permissions()
    ann: Inbox = client(hub, "ann")
    hub.join(ann.connection, "news")
    ann.connection.metadata[WHO] = Who("ann")
    rules.reassign(ann.connection, None, "a")
    assert WHO not in ann.connection.metadata and ann.take() == []
    assert ann.connection.rooms == {"news"}
