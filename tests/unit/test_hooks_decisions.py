"""The hooks' JSON: request bodies, answers read strictly, the failure policy."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from roomcast.hooks.decisions import (
    FORWARDED_HEADERS,
    MAX_ANSWER_BYTES,
    MAX_REASON,
    Allowed,
    AnswerError,
    ConnectAllowed,
    Denied,
    Failure,
    Policy,
    connect_request,
    join_request,
    on_connect_failure,
    on_failure,
    parse_connect,
    parse_join,
    parse_publish,
    publish_request,
)
from roomcast.rules import Action, Cause, Namespace, Namespaces, Rules


def answer(value: Any) -> bytes:
    return json.dumps(value).encode()


# -- requests ---------------------------------------------------------------------------------


def test_connect_request_forwards_only_the_listed_headers() -> None:
    """Identifying headers go to the backend, lower-cased; the rest stay inside."""
    headers = [
        ("Cookie", "a=1"),
        ("COOKIE", "b=2"),
        ("Authorization", "Basic eA=="),
        ("User-Agent", "test"),
        ("Origin", "https://example.com"),
        ("X-Forwarded-For", "203.0.113.7"),
        ("x-forwarded-for", "10.0.0.1"),
        ("X-Internal-Secret", "hidden"),
        ("Host", "roomcast"),
    ]
    body = json.loads(connect_request(headers, "", "/ws", "127.0.0.1"))
    assert body["headers"] == {
        "cookie": "a=1; b=2",
        "authorization": "Basic eA==",
        "user-agent": "test",
        "origin": "https://example.com",
        "x-forwarded-for": "203.0.113.7, 10.0.0.1",
    }
    assert set(body["headers"]) == set(FORWARDED_HEADERS)


def test_connect_request_forwards_configured_headers_too() -> None:
    """An operator's extra header (any case) is passed on as well."""
    forward = (*FORWARDED_HEADERS, "x-tenant")
    body = json.loads(
        connect_request(
            [("X-Tenant", "acme")], "", "/ws", None, forward=[n.upper() for n in forward]
        )
    )
    assert body["headers"] == {"x-tenant": "acme"}


def test_connect_request_shape() -> None:
    """The whole connect body: hook, headers, query (first value of a repeat), path, remote."""
    body = json.loads(
        connect_request([], "room=lobby&sid=s%20x&room=other&empty=", "/ws/lobby", None)
    )
    assert body == {
        "hook": "connect",
        "headers": {},
        "query": {"room": "lobby", "sid": "s x", "empty": ""},
        "path": "/ws/lobby",
        "remote": None,
    }


def test_join_and_publish_requests() -> None:
    """Join carries the connect hook's data; publish the message's data; unicode kept."""
    assert json.loads(join_request("alice", "c1", "chat:é", {"plan": "pro"})) == {
        "hook": "join",
        "user": "alice",
        "connection": "c1",
        "room": "chat:é",
        "data": {"plan": "pro"},
    }
    assert json.loads(join_request(None, "c2", "r")) == {
        "hook": "join",
        "user": None,
        "connection": "c2",
        "room": "r",
        "data": None,
    }
    body = publish_request("bob", "c3", "r", [1, "x"])
    assert b" " not in body
    assert json.loads(body) == {
        "hook": "publish",
        "user": "bob",
        "connection": "c3",
        "room": "r",
        "data": [1, "x"],
    }


# -- connect answers --------------------------------------------------------------------------


def test_connect_allowed_with_everything() -> None:
    """User, capabilities, data and expiry come through; the expiry as a float."""
    decision = parse_connect(
        answer(
            {
                "allow": True,
                "user": "alice",
                "rooms": {"chat:*": ["join", "publish"], "news": ["join"]},
                "data": {"plan": "pro"},
                "expires_at": 1765000000,
            }
        )
    )
    assert isinstance(decision, ConnectAllowed)
    assert decision.user == "alice"
    assert decision.data == {"plan": "pro"}
    assert decision.expires_at == 1765000000.0
    assert isinstance(decision.expires_at, float)
    assert decision.failure is None
    assert decision.capabilities is not None
    assert decision.capabilities.allows("chat:lobby", Action.PUBLISH)
    assert not decision.capabilities.allows("news", Action.PUBLISH)


def test_connect_grants_mean_what_a_tokens_do() -> None:
    """A hook's ``rooms`` claim and a JWT's give the same ``Rules`` decisions."""
    claim = {"chat:*": ["join"], "inbox#bob": ["*"], "news:*": ["*"]}
    rules = Rules(Namespaces(named={"news": Namespace("news", publish=False)}))
    from_hook = parse_connect(answer({"allow": True, "user": "alice", "rooms": claim}))
    assert isinstance(from_hook, ConnectAllowed)
    from_token = rules.who("alice", {"sub": "alice", "rooms": claim})
    for room, action in [
        ("chat:lobby", Action.JOIN),
        ("chat:lobby", Action.PUBLISH),
        ("inbox#bob", Action.JOIN),
        ("news:a", Action.JOIN),
        ("news:a", Action.PUBLISH),
        ("other", Action.JOIN),
    ]:
        assert rules.check(from_hook.who(), room, action) == rules.check(from_token, room, action)
    refusal = rules.check(from_hook.who(), "chat:lobby", Action.PUBLISH)
    assert refusal is not None and refusal.cause is Cause.NOT_GRANTED


def test_connect_allowed_without_grants() -> None:
    """No ``rooms`` (or null): the namespaces' ``allow`` applies; a client, not anonymous."""
    for extra in ({}, {"rooms": None}):
        decision = parse_connect(answer({"allow": True, "user": "u", **extra}))
        assert decision == ConnectAllowed("u")
        assert isinstance(decision, ConnectAllowed)
        who = decision.who()
        assert who.user_id == "u" and who.capabilities is None and not who.anonymous


def test_connect_denied() -> None:
    """A refusal's reason and status (401 or 403; 403 and a stock reason by default)."""
    assert parse_connect(answer({"allow": False})) == Denied("refused by the backend", 403)
    assert parse_connect(answer({"allow": False, "reason": "expired", "status": 401})) == Denied(
        "expired", 401
    )
    assert parse_connect(answer({"allow": False, "reason": ""})) == Denied()
    long = parse_connect(answer({"allow": False, "reason": "x" * 1000}))
    assert isinstance(long, Denied) and len(long.reason) == MAX_REASON


GARBAGE: list[tuple[bytes, str]] = [
    (b"", "not JSON"),
    (b"<html>502 Bad Gateway</html>", "not JSON"),
    (b'{"allow": true', "not JSON"),
    (b'{"allow": true, "user": "u", "data": NaN}', "NaN, which is not JSON"),
    (b'{"allow": true, "user": "u", "data": Infinity}', "Infinity"),
    (b'{"allow": true, "user": "\xff"}', "not UTF-8"),
    (b"[]", "must be a JSON object, not an array"),
    (b'"allow"', "not a string"),
    (b"null", "not null"),
    (b"1", "not a number"),
    (b"true", "not a boolean"),
    (b"{}", '"allow": true or false'),
    (answer({"allow": "true", "user": "u"}), '"allow": true or false'),
    (answer({"allow": 1, "user": "u"}), '"allow": true or false'),
    (answer({"allow": None}), '"allow": true or false'),
    (answer({"allow": True, "user": "u", "room": {}}), 'unknown key "room"'),
    (answer({"allow": False, "user": "u"}), 'unknown key "user"'),
    (answer({"allow": False, "status": 500}), "401 or 403"),
    (answer({"allow": False, "status": "401"}), "401 or 403"),
    (answer({"allow": False, "status": True}), "401 or 403"),
    (answer({"allow": False, "reason": 5}), '"reason" must be a string, not a number'),
    (answer({"allow": False, "reason": ["no"]}), "not an array"),
    (answer({"allow": True}), '"user" must be a string'),
    (answer({"allow": True, "user": ""}), '"user" must be a string'),
    (answer({"allow": True, "user": 42}), '"user" must be a string'),
    (answer({"allow": True, "user": "u" * 1025}), '"user" must be a string'),
    (answer({"allow": True, "user": "u", "rooms": ["chat"]}), "room pattern -> list of actions"),
    (answer({"allow": True, "user": "u", "rooms": {"$stats": ["join"]}}), "$ rooms"),
    (answer({"allow": True, "user": "u", "rooms": {"a": ["fly"]}}), "unknown action 'fly'"),
    (answer({"allow": True, "user": "u", "rooms": {"a": "join"}}), "list of actions"),
    (answer({"allow": True, "user": "u", "expires_at": "1765000000"}), "not a string"),
    (answer({"allow": True, "user": "u", "expires_at": True}), "not a boolean"),
    (answer({"allow": True, "user": "u", "expires_at": 0}), "between 1970 and 9999"),
    (answer({"allow": True, "user": "u", "expires_at": -5}), "between 1970 and 9999"),
    (answer({"allow": True, "user": "u", "expires_at": 1e20}), "between 1970 and 9999"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (answer({"allow": True, "user": "u", "data": "x" * MAX_ANSWER_BYTES}), "over"),
]


@pytest.mark.parametrize(("body", "message"), GARBAGE)
def test_connect_garbage_is_an_answer_error(body: bytes, message: str) -> None:
    """Every malformed connect answer is refused with a message that says what is wrong."""
    with pytest.raises(AnswerError) as caught:
        parse_connect(body)
    assert message in str(caught.value)


# -- join and publish answers -----------------------------------------------------------------


@pytest.mark.parametrize("parse", [parse_join, parse_publish])
def test_join_and_publish_answers(parse: Any) -> None:
    """Allow, allow with data (null included: it replaces), deny with a reason."""
    assert parse(answer({"allow": True})) == Allowed()
    assert parse(answer({"allow": True, "data": {"n": 1}})) == Allowed({"n": 1}, has_data=True)
    assert parse(answer({"allow": True, "data": None})) == Allowed(None, has_data=True)
    assert parse(answer({"allow": False, "reason": "muted"})) == Denied("muted")
    assert parse(answer({"allow": False})) == Denied()


@pytest.mark.parametrize("parse", [parse_join, parse_publish])
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"nope", "not JSON"),
        (b"[]", "not an array"),
        (answer({"allow": "no"}), '"allow": true or false'),
        (answer({"allow": True, "user": "u"}), 'unknown key "user"'),
        (answer({"allow": True, "rooms": {}}), 'unknown key "rooms"'),
        (answer({"allow": False, "status": 401}), 'unknown key "status"'),
        (answer({"allow": False, "data": 1}), 'unknown key "data"'),
        (answer({"allow": False, "reason": None}), "not null"),
    ],
)
def test_join_and_publish_garbage(parse: Any, body: bytes, message: str) -> None:
    """Malformed join and publish answers are refused, saying why."""
    with pytest.raises(AnswerError) as caught:
        parse(body)
    assert message in str(caught.value)


# -- the failure policy -----------------------------------------------------------------------


@pytest.mark.parametrize("failure", list(Failure))
def test_deny_policy_refuses_with_503(failure: Failure) -> None:
    """Failing closed is the backend's trouble (503), with a reason that reveals nothing."""
    for decision in (on_failure(Policy.DENY, failure), on_connect_failure(Policy.DENY, failure)):
        assert isinstance(decision, Denied)
        assert decision.status == 503
        assert decision.failure is failure
        assert "backend" in decision.reason


def test_allow_policy() -> None:
    """Failing open: join/publish go ahead without data; a connect is anonymous."""
    assert on_failure(Policy.ALLOW, Failure.TIMEOUT) == Allowed(failure=Failure.TIMEOUT)
    connect = on_connect_failure(Policy.ALLOW, Failure.STATUS)
    assert connect == ConnectAllowed(None, failure=Failure.STATUS)
    assert isinstance(connect, ConnectAllowed)
    who = connect.who()
    assert who.anonymous and who.user_id is None
    rules = Rules(Namespaces(named={"public": Namespace("public", anonymous=True)}))
    assert rules.check(who, "public:x", Action.JOIN) is None
    refusal = rules.check(who, "private:x", Action.JOIN)
    assert refusal is not None and refusal.cause is Cause.NAMESPACE_FORBIDS


def test_the_vocabulary_loads_no_http_client() -> None:
    """``import roomcast`` and the hooks' pure modules leave aiohttp unloaded; the client
    loads it when first named."""
    code = (
        "import sys, roomcast, roomcast.hooks, roomcast.hooks.decisions, roomcast.hooks.metrics\n"
        "print('aiohttp' in sys.modules)\n"
        "from roomcast.hooks import HookClient\n"
        "print('aiohttp' in sys.modules, HookClient.__module__)\n"
        "try:\n"
        "    roomcast.hooks.Nothing\n"
        "except AttributeError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.splitlines() == [
        "False",
        "True roomcast.hooks.client",
        "module 'roomcast.hooks' has no attribute 'Nothing'",
    ]
