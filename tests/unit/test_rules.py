"""The pure room rules: patterns, the capability claim, namespaces, and the decision's order."""

from __future__ import annotations

from typing import Any

import pytest

from roomcast.history.positions import HistoryLimits
from roomcast.rules import (
    ALL_ACTIONS,
    Action,
    Capabilities,
    Cause,
    ClaimError,
    Namespace,
    Namespaces,
    Pattern,
    PresenceFor,
    Rules,
    RulesError,
    Who,
    personal_owners,
)
from roomcast.rules.capabilities import MAX_PATTERN_LENGTH, MAX_PATTERNS


@pytest.mark.parametrize(
    ("pattern", "room", "matches"),
    [
        ("news", "news", True),
        ("news", "news2", False),
        ("news", "News", False),
        ("chat:*", "chat:lobby", True),
        ("chat:*", "chat:", True),
        ("chat:*", "chatroom", False),
        ("chat:*", "chat", False),
        ("*:log", "app:log", True),
        ("*:log", "app:logs", False),
        ("a*z", "az", True),
        ("a*z", "a", False),
        ("a*a", "a", False),
        ("a*b*c", "abc", True),
        ("a*b*c", "a-b-b-c", True),
        ("a*b*c", "ac", False),
        ("a*b*c", "acb", False),
        ("a**z", "az", True),
        ("a**z", "a-z", True),
        ("*", "", True),
        ("*", "anything at all", True),
        ("x*", "x", True),
    ],
)
def test_patterns(pattern: str, room: str, matches: bool) -> None:
    """``*`` stands for any run of characters, none included; the rest matches exactly."""
    assert Pattern.of(pattern).matches(room) is matches


def test_grants_add_up_and_never_reach_the_servers_rooms() -> None:
    """Every matching entry adds its actions; ``*`` in a list is every action; ``*`` as a
    pattern grants every room but the server's ``$`` ones."""
    caps = Capabilities.from_claim(
        {"chat:*": ["join"], "chat:ops": ["publish"], "*": ["history"], "all": ["*"]}
    )
    assert caps.allows("chat:ops", Action.JOIN) and caps.allows("chat:ops", Action.PUBLISH)
    assert not caps.allows("chat:lobby", Action.PUBLISH)
    assert caps.allows("anything", Action.HISTORY) and not caps.allows("$stats", Action.HISTORY)
    assert all(caps.allows("all", action) for action in ALL_ACTIONS)
    assert not caps.allows("$presence:chat:ops", Action.JOIN)


@pytest.mark.parametrize(
    ("claim", "message"),
    [
        ([], "must be an object"),
        ("chat:*", "must be an object"),
        (None, "must be an object"),
        ({"": ["join"]}, "1 to 1024 characters"),
        ({"x" * (MAX_PATTERN_LENGTH + 1): ["join"]}, "1 to 1024 characters"),
        ({1: ["join"]}, "1 to 1024 characters"),
        ({"$stats": ["join"]}, "cannot be granted"),
        ({"$presence:*": ["join"]}, "cannot be granted"),
        ({"chat:*": "join"}, "expected a list of actions"),
        ({"chat:*": {"join": True}}, "expected a list of actions"),
        ({"chat:*": ["JOIN"]}, "unknown action 'JOIN'"),
        ({"chat:*": ["join", "kick"]}, "unknown action 'kick'"),
        ({"chat:*": [["join"]]}, "unknown action"),
        ({"chat:*": [{"a": 1}]}, "unknown action"),
        ({"chat:*": [None]}, "unknown action"),
        ({str(i): ["join"] for i in range(MAX_PATTERNS + 1)}, "more than 1000 entries"),
    ],
)
def test_claim_errors_say_where(claim: Any, message: str) -> None:
    """A claim that is not pattern -> list of known actions is refused, naming the entry."""
    with pytest.raises(ClaimError, match=message) as raised:
        Capabilities.from_claim(claim, name="perms")
    assert "'perms' claim" in str(raised.value)


def test_an_empty_claim_grants_nothing() -> None:
    """``{}`` and an empty list of actions are valid and grant nothing."""
    claims: list[dict[str, list[str]]] = [{}, {"chat:*": []}]
    for claim in claims:
        assert not Capabilities.from_claim(claim).allows("chat:x", Action.JOIN)


@pytest.mark.parametrize(
    ("tables", "key", "message"),
    [
        ([], "namespaces", "a table of namespaces"),
        ({"": {}}, "namespaces.", "non-empty"),
        ({"a:b": {}}, "namespaces.a:b", "without ':'"),
        ({"$x": {}}, "namespaces.$x", "without"),
        ({"chat": []}, "namespaces.chat", "a table of settings"),
        ({"chat": {"colour": 1}}, "namespaces.chat.colour", "unknown setting"),
        ({"chat": {"allow": "join"}}, "namespaces.chat.allow", "a list of actions"),
        ({"chat": {"allow": ["kick"]}}, "namespaces.chat.allow", "unknown action"),
        ({"chat": {"allow": [["join"]]}}, "namespaces.chat.allow", "unknown action"),
        ({"chat": {"anonymous": "yes"}}, "namespaces.chat.anonymous", "true or false"),
        ({"chat": {"max_members": -1}}, "namespaces.chat.max_members", "0 or more"),
        ({"chat": {"max_members": True}}, "namespaces.chat.max_members", "0 or more"),
        ({"chat": {"history_size": 1.5}}, "namespaces.chat.history_size", "whole number"),
        ({"chat": {"history_ttl": 0}}, "namespaces.chat.history_ttl", "above 0"),
        ({"chat": {"history_ttl": float("inf")}}, "namespaces.chat.history_ttl", "finite"),
        ({"chat": {"presence_for": "all"}}, "namespaces.chat.presence_for", "'members'"),
        ({"chat": {"presence_for": ["x"]}}, "namespaces.chat.presence_for", "'members'"),
    ],
)
def test_namespace_errors_name_the_key(tables: Any, key: str, message: str) -> None:
    """Each mistake in the namespaces names its dotted key."""
    with pytest.raises(RulesError, match=message) as raised:
        Namespaces.from_mapping(tables)
    assert raised.value.key == key


def test_namespaces_by_prefix_and_the_default() -> None:
    """A room follows the namespace before its first ':'; no ':' or an unknown prefix: the
    default one (which a ``default`` table configures)."""
    spaces = Namespaces.from_mapping(
        {
            "default": {"allow": ["join"]},
            "chat": {"presence_for": "anyone", "history_ttl": 5, "allow": ["*"]},
        }
    )
    assert spaces.of("chat:a:b").name == "chat" and spaces.of("chat:").name == "chat"
    for room in ("chat", "chatroom", "nowhere:x", ":x"):
        assert spaces.of(room) is spaces.default
    assert spaces.default.allow == {Action.JOIN} and spaces.named["chat"].allow == ALL_ACTIONS
    assert spaces.named["chat"].presence_for is PresenceFor.ANYONE
    assert not spaces.anonymous and Namespaces(Namespace(anonymous=True)).anonymous


def test_who_reads_the_claim_once() -> None:
    """No claim: the namespaces' allow; a claim (even empty): its grants; a null or malformed
    claim refuses the token; no token at all: anonymous."""
    rules = Rules(claim="perms")
    assert rules.who("ann", {}) == Who("ann")
    assert rules.who("ann", {"perms": {}}).capabilities is not None
    with pytest.raises(ClaimError):
        rules.who("ann", {"perms": None})
    with pytest.raises(ClaimError):
        rules.who("ann", {"perms": ["x"]})
    assert rules.who(None, None) == Who(None, None, anonymous=True)


def test_personal_owners() -> None:
    """The users after the last '#', comma-separated; None without a '#'."""
    assert personal_owners("inbox#ann") == ["ann"]
    assert personal_owners("dm#ann,bob") == ["ann", "bob"]
    assert personal_owners("a#b#ann") == ["ann"]
    assert personal_owners("lobby") is None


def test_the_order_of_the_checks() -> None:
    """Namespace prohibitions first (anonymous, publish, presence), then personal rooms
    (before any grant), then the claim or the namespace's allow."""
    spaces = Namespaces.from_mapping(
        {
            "feed": {"publish": False, "presence": False},
            "lobby": {"anonymous": True, "allow": ["join"]},
        }
    )
    rules = Rules(spaces)
    everything = Capabilities.from_claim({"*": ["*"]})
    ann, guest = Who("ann", everything), Who(anonymous=True)

    def cause(who: Who, room: str, action: Action) -> Cause | None:
        refusal = rules.check(who, room, action)
        return None if refusal is None else refusal.cause

    assert cause(ann, "feed:x", Action.PUBLISH) is Cause.NAMESPACE_FORBIDS
    assert cause(ann, "feed:x", Action.PRESENCE) is Cause.NAMESPACE_FORBIDS
    assert cause(ann, "feed:inbox#bob", Action.PUBLISH) is Cause.NAMESPACE_FORBIDS
    assert cause(ann, "inbox#bob", Action.JOIN) is Cause.PERSONAL_ROOM
    assert cause(Who("ann", Capabilities.from_claim({})), "inbox#ann", Action.JOIN) is None
    assert cause(guest, "chat:x", Action.JOIN) is Cause.NAMESPACE_FORBIDS
    assert cause(guest, "lobby:x", Action.JOIN) is None
    assert cause(guest, "lobby:x", Action.PUBLISH) is Cause.NOT_GRANTED
    assert cause(guest, "lobby:inbox#x", Action.JOIN) is Cause.PERSONAL_ROOM
    assert cause(Who("ann"), "chat:x", Action.PUBLISH) is None
    assert cause(Who("ann", Capabilities.from_claim({})), "chat:x", Action.JOIN) is (
        Cause.NOT_GRANTED
    )
    assert rules.decide("inbox#ann", Action.JOIN, "ann") is None
    assert rules.decide("lobby:x", Action.JOIN, None, anonymous=True) is None
    message = rules.check(ann, "feed:x", Action.PUBLISH)
    assert message is not None and "namespace 'feed'" in message.message


def test_revoked_rooms() -> None:
    """A narrower claim takes away the rooms it no longer grants, never the server's."""
    rules = Rules()
    who = Who("ann", Capabilities.from_claim({"news": ["join"]}))
    rooms = ["news", "chat:a", "$stats", "$presence:news", "inbox#ann"]
    assert rules.revoked(who, rooms) == ["chat:a"]


def test_history_rule() -> None:
    """Each namespace's size and ttl over the server's limits; 0: none; no server history:
    only namespaces that set a size keep any; None when no room keeps any."""
    server = HistoryLimits(100, 300.0)
    spaces = Namespaces.from_mapping(
        {
            "short": {"history_size": 2},
            "brief": {"history_ttl": 5},
            "none": {"history_size": 0},
        }
    )
    rule = Rules(spaces).history_rule(server)
    assert rule is not None
    assert rule("short:x") == HistoryLimits(2, 300.0)
    assert rule("brief:x") == HistoryLimits(100, 5.0)
    assert rule("none:x") is None and rule("$stats") is None
    assert rule("plain") == server
    alone = Rules(spaces).history_rule(None)
    assert alone is not None and alone("short:x") == HistoryLimits(2, 300.0)
    assert alone("plain") is None and alone("brief:x") is None
    assert Rules(Namespaces.from_mapping({"x": {"history_size": 0}})).history_rule(None) is None
    one = Rules().history_rule(server)
    assert one is not None and one("plain") == server and one("$presence:x") is None


def test_room_authorizer_for_the_fastapi_managers() -> None:
    """The join decision as ``(identity, room) -> bool``; a malformed claim refuses."""
    from roomcast.auth import Identity

    authorize = Rules().room_authorizer()
    assert authorize(Identity("ann", {"rooms": {"chat:*": ["join"]}}), "chat:x")
    assert not authorize(Identity("ann", {"rooms": {"chat:*": ["join"]}}), "news")
    assert not authorize(Identity("ann", {"rooms": []}), "chat:x")
    assert authorize(Identity("ann"), "inbox#ann") and not authorize(Identity("ann"), "dm#bob")


def test_a_claim_is_parsed_once_per_distinct_value() -> None:
    """Clients carrying the same claim share one parse; a bad claim is refused every time;
    the cache is bounded."""
    from roomcast.rules import rooms

    rules = Rules()
    first = rules.who("a", {"rooms": {"chat:*": ["join"]}})
    second = rules.who("b", {"rooms": {"chat:*": ["join"]}})
    assert first.capabilities is second.capabilities
    other = rules.who("c", {"rooms": {"chat:*": ["join", "publish"]}})
    assert other.capabilities is not first.capabilities
    for _ in range(2):
        with pytest.raises(ClaimError):
            rules.who("d", {"rooms": {"chat:*": ["jion"]}})
    nested = rules.who("e", {"rooms": {"x": ["join"]}, "other": [{}]})
    assert nested.capabilities is not None
    with pytest.raises(ClaimError):
        rules.who("f", {"rooms": {"x": [{"no": "hash"}]}})
    for n in range(rooms.MAX_DISTINCT_CLAIMS + 10):
        rules.capabilities({f"r{n}": ["join"]})
    assert len(rules._parsed) == rooms.MAX_DISTINCT_CLAIMS


def test_what_patterns_grant_a_room_is_remembered_within_a_bound() -> None:
    """A room's grant is worked out once and remembered; the memory starts over when full."""
    from roomcast.rules import capabilities

    caps = Capabilities.from_claim({"chat:*": ["join"], "chat:x*": ["publish"]})
    assert caps.allows("chat:xy", Action.PUBLISH) and caps.allows("chat:xy", Action.JOIN)
    assert caps.granted["chat:xy"] == {Action.JOIN, Action.PUBLISH}
    assert not caps.allows("news", Action.JOIN) and caps.granted["news"] == frozenset()
    for n in range(capabilities.MAX_REMEMBERED_ROOMS + 5):
        caps.allows(f"chat:{n}", Action.JOIN)
    assert len(caps.granted) <= capabilities.MAX_REMEMBERED_ROOMS
