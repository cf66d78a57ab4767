"""Who may do what in which room, as ``roomcast serve`` enforces it, end to end.

Each test runs a real ``Server`` (picows) on a free loopback port in the test's event loop,
with namespaces given as ``ServerConfig(rules=...)``, and drives it with real websockets
clients holding real JWTs.  Every refusal is checked by its stable ``cause``.
"""

from __future__ import annotations

import contextlib
import json
import time
import unicodedata
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from roomcast import JWTAuthenticator
from roomcast.rules import Namespaces, Rules
from roomcast.server import Server, ServerConfig
from tests.integration.test_server import http_get
from tests.support import connect, eventually, recv

SECRET = "rules-secret-rules-secret-rules-secret"
NOTHING = object()
"""A token without the capability claim."""

NAMESPACES: dict[str, Any] = {
    "chat": {"allow": ["join"]},  # (tokens without the claim may only join)
    "feed": {"publish": False, "presence_for": "anyone"},
    "quiet": {"presence": False},
    "lobby": {"anonymous": True, "allow": ["join", "history"]},
}


def token(sub: str = "alice", rooms: object = NOTHING) -> str:
    import jwt

    claims: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + 60}
    if rooms is not NOTHING:
        claims["rooms"] = rooms
    return jwt.encode(claims, SECRET, algorithm="HS256")


@contextlib.asynccontextmanager
async def serving(
    namespaces: dict[str, Any] | None = None, *, auth: bool = True, **options: Any
) -> AsyncIterator[Server]:
    rules = Rules(Namespaces.from_mapping(NAMESPACES if namespaces is None else namespaces))
    authenticator = JWTAuthenticator(SECRET) if auth else None
    server = Server(ServerConfig(port=0, rules=rules, authenticator=authenticator, **options))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def client(server: Server, bearer: str | None, path: str = "/ws") -> ClientConnection:
    headers = {} if bearer is None else {"Authorization": f"Bearer {bearer}"}
    return await connect(f"ws://127.0.0.1:{server.port}{path}", additional_headers=headers)


async def call(ws: ClientConnection, **command: Any) -> dict[str, Any]:
    """Send a command and return the answer to it."""
    command.setdefault("event_id", "e")
    await ws.send(json.dumps(command))
    return await answer(ws)


async def answer(ws: ClientConnection) -> dict[str, Any]:
    """The next message that is not a presence event."""
    while True:
        message = json.loads(await recv(ws))
        assert isinstance(message, dict)
        if message.get("type") != "presence":
            return message


def outcome(answer: dict[str, Any]) -> str | None:
    """None for an answer that is not a refusal; else its cause (or its text, if none)."""
    if answer["type"] != "error":
        return None
    return str(answer.get("cause") or answer["error"])


async def attempt(ws: ClientConnection, room: str, action: str) -> str | None:
    """Try ``action`` in ``room``: None if the server carried it out, else the cause."""
    if action == "join":
        return outcome(await call(ws, type="join", room=room))
    if action == "publish":
        assert outcome(await call(ws, type="join", room=room)) is None, "a publish row joins"
        return outcome(await call(ws, type="publish", room=room, data=1))
    if action == "presence":
        return outcome(await call(ws, type="join", room=f"$presence:{room}"))
    if action == "history":
        return outcome(await call(ws, type="history", room=room))
    assert action == "join since"  # (the room is empty: its history is all there, unless...)
    ack = await call(ws, type="join", room=room, since={"epoch": "x", "offset": 0})
    return outcome(ack) or f"recovered: {ack['recovered']}"


NFC, NFD = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")

TABLE: list[tuple[object, str, str, str | None]] = [
    # (the token's claim, the room, the action, the cause of the refusal or None)
    ({"chat:*": ["join"]}, "chat:lobby", "join", None),
    ({"chat:*": ["join"]}, "chat:", "join", None),
    ({"chat:*": ["join"]}, "chatroom", "join", "not_granted"),
    ({"chat:*": ["join"]}, "Chat:lobby", "join", "not_granted"),
    ({"chat:*": ["join"]}, "chat:lobby", "publish", "not_granted"),
    ({"chat:*": ["join", "publish"]}, "chat:lobby", "publish", None),
    ({"chat:*": ["*"]}, "chat:lobby", "history", None),
    ({"chat:*": ["join"]}, "chat:lobby", "history", "not_granted"),
    ({"chat:*": ["join"]}, "chat:lobby", "join since", "recovered: False"),
    ({"chat:*": ["join", "history"]}, "chat:lobby", "join since", "recovered: True"),
    ({"chat:*": []}, "chat:lobby", "join", "not_granted"),
    ({}, "news", "join", "not_granted"),
    ({"*": ["join"]}, "anything:at all", "join", None),
    ({"a*z": ["join"]}, "a-to-z", "join", None),
    ({"a*z": ["join"]}, "a-to-y", "join", "not_granted"),
    ({"a**z": ["join"]}, "az", "join", None),
    ({"news": ["join"]}, "news", "join", None),
    ({"news": ["join"]}, "news2", "join", "not_granted"),
    ({NFC: ["join"]}, NFC, "join", None),
    ({NFC: ["join"]}, NFD, "join", "not_granted"),
    # Without the claim: the namespace's allow (chat: join only; default: everything).
    (NOTHING, "chat:lobby", "join", None),
    (NOTHING, "chat:lobby", "publish", "not_granted"),
    (NOTHING, "chat:lobby", "history", "not_granted"),
    (NOTHING, "news", "publish", None),
    (NOTHING, "nowhere:x", "publish", None),  # (an unknown prefix: the default namespace)
    # What a namespace forbids whatever the token grants.
    ({"feed:*": ["*"]}, "feed:x", "publish", "namespace_forbids"),
    ({"quiet:*": ["*"]}, "quiet:x", "presence", "namespace_forbids"),
    # Presence: the presence action on the watched room; "anyone" needs no membership.
    ({"feed:*": ["presence"]}, "feed:x", "presence", None),
    ({"feed:*": ["join"]}, "feed:x", "presence", "not_granted"),
    ({"*": ["*"]}, "chat:x", "presence", "join 'chat:x' first"),
    # Another user's personal room, whatever the grant; one's own without any.
    ({"*": ["*"]}, "inbox#bob", "join", "personal_room"),
    ({}, "inbox#alice", "join", None),
    ({}, "dm#bob,alice", "publish", None),
    ({"*": ["*"]}, "dm#bob,carol", "history", "personal_room"),
]


@pytest.mark.parametrize(("claim", "room", "action", "expected"), TABLE)
async def test_capabilities_by_pattern_action_and_namespace(
    claim: object, room: str, action: str, expected: str | None
) -> None:
    """Each row: a token with this claim, this action in this room: allowed, or refused with
    this cause."""
    async with serving() as server:
        ws = await client(server, token(rooms=claim))
        assert await attempt(ws, room, action) == expected
        await ws.close()


@pytest.mark.parametrize(
    "claim",
    [
        {"": ["join"]},
        {"$stats": ["join"]},
        {"$presence:*": ["join"]},
        {"chat:*": "join"},
        {"chat:*": ["JOIN"]},
        {"chat:*": [["join"]]},
        ["chat:*"],
        "chat:*",
        None,
    ],
)
async def test_a_malformed_claim_refuses_the_token(claim: object) -> None:
    """An empty pattern, a $ room, actions that are not a list of known ones, a claim that is
    not an object (null included): HTTP 401 naming the claim, nothing registered."""
    async with serving() as server:
        with pytest.raises(InvalidStatus) as refused:
            await client(server, token(rooms=claim))
        assert refused.value.response.status_code == 401
        assert b"'rooms' claim" in (refused.value.response.body or b"")
        assert server.hub.active_connections == 0 and server.counters.auth_failures == 1


async def test_the_room_in_the_path_is_checked_before_the_upgrade() -> None:
    """/ws/ROOM refuses with 403 and the cause when the join is not allowed; 503 when the
    room is full."""
    async with serving({"duo": {"max_members": 1}}) as server:
        with pytest.raises(InvalidStatus) as refused:
            await client(server, token(rooms={"chat:*": ["join"]}), "/ws/secret")
        assert refused.value.response.status_code == 403
        assert refused.value.response.body == b"not_granted: join is not granted in this room\n"
        first = await client(server, token(), "/ws/duo:x")
        with pytest.raises(InvalidStatus) as full:
            await client(server, token("bob"), "/ws/duo:x")
        assert full.value.response.status_code == 503
        assert (full.value.response.body or b"").startswith(b"room_full: ")
        await first.close()


async def test_a_refresh_takes_away_the_rooms_it_no_longer_grants() -> None:
    """A new token without chat: one revoked event names the room and its presence watch,
    then the ack; the client gets nothing more from that room, and the new grant applies."""
    async with serving() as server:
        old = {"chat:*": ["join", "presence"], "news": ["join"]}
        alice = await client(server, token(rooms=old))
        bob = await client(server, token("bob", rooms={"chat:*": ["join", "publish"]}))
        assert outcome(await call(bob, type="join", room="chat:a")) is None
        for room in ("chat:a", "news", "$presence:chat:a"):
            assert outcome(await call(alice, type="join", room=room)) is None
        await alice.send(json.dumps({"type": "auth", "token": token(rooms={"news": ["join"]})}))
        revoked = await answer(alice)
        assert revoked["type"] == "revoked" and revoked["cause"] == "not_granted"
        assert revoked["rooms"] == ["chat:a", "$presence:chat:a"]
        assert "no longer grants" in revoked["reason"]
        assert (await answer(alice))["type"] == "ack"
        assert alice_rooms(server) == {"news"}
        assert outcome(await call(bob, type="publish", room="chat:a", data="hi")) is None
        # (bob's publish was handed out before its ack: anything for alice precedes her pong)
        assert (await call(alice, type="ping"))["type"] == "pong"
        assert outcome(await call(alice, type="join", room="chat:b")) == "not_granted"
        await alice.close()
        await bob.close()


async def test_a_refresh_may_take_away_only_a_watch_or_nothing() -> None:
    """A token that still grants the room but not its presence takes the watch alone; a
    token without the claim falls back to the namespace's allow, and takes nothing here."""
    async with serving() as server:
        alice = await client(server, token(rooms={"chat:*": ["join", "presence", "publish"]}))
        for room in ("chat:a", "$presence:chat:a"):
            assert outcome(await call(alice, type="join", room=room)) is None
        narrower = token(rooms={"chat:*": ["join", "publish"]})
        revoked = await call(alice, type="auth", token=narrower)
        assert revoked["type"] == "revoked" and revoked["rooms"] == ["$presence:chat:a"]
        assert revoked["cause"] == "not_granted" and revoked["ref_event_id"] == "e"
        assert (await answer(alice))["type"] == "ack"
        assert (await call(alice, type="auth", token=token()))["type"] == "ack"
        assert alice_rooms(server) == {"chat:a"}
        assert outcome(await call(alice, type="publish", room="chat:a", data=1)) == ("not_granted")
        bad = await call(alice, type="auth", token=token(rooms={"chat:*": "join"}))
        assert bad["type"] == "error" and "'rooms' claim" in bad["error"]
        await alice.close()


def alice_rooms(server: Server) -> set[str]:
    (alice,) = server.hub.get_user_connections("alice")
    return alice.rooms


async def test_personal_rooms_without_authentication() -> None:
    """Without tokens the user id is the client's word: its own personal room needs no grant,
    another user's is refused."""
    async with serving(auth=False) as server:
        ann = await client(server, None, "/ws?user_id=ann")
        assert outcome(await call(ann, type="join", room="inbox#ann")) is None
        assert outcome(await call(ann, type="join", room="inbox#bob")) == "personal_room"
        await ann.close()


async def test_anonymous_clients_only_where_a_namespace_lets_them_in() -> None:
    """No token: admitted as nobody where a namespace is anonymous, and there only (401 on a
    server without one)."""
    async with serving() as server:
        guest = await client(server, None, "/ws?user_id=mallory")
        assert outcome(await call(guest, type="join", room="lobby:x")) is None
        publish = await call(guest, type="publish", room="lobby:x", data=1)
        assert outcome(publish) == "not_granted"
        assert outcome(await call(guest, type="join", room="chat:x")) == "namespace_forbids"
        personal = await call(guest, type="join", room="inbox#mallory")
        assert outcome(personal) == "namespace_forbids"
        assert [c.user_id for c in server.hub.get_room_members("lobby:x")] == [None]
        with pytest.raises(InvalidStatus) as refused:
            await client(server, None, "/ws/chat:x")
        assert refused.value.response.status_code == 403
        await guest.close()
    async with serving({"chat": {}}) as server:
        with pytest.raises(InvalidStatus) as refused:
            await client(server, None)
        assert refused.value.response.status_code == 401


async def test_room_full_and_too_many_rooms() -> None:
    """max_members caps a room's connections in this process (1013, room_full);
    max_rooms_per_connection caps one connection's rooms of that namespace (1008)."""
    namespaces = {"duo": {"max_members": 2}, "chat": {"max_rooms_per_connection": 2}}
    async with serving(namespaces) as server:
        clients = [await client(server, token(f"u{i}")) for i in range(3)]
        for ws in clients[:2]:
            assert outcome(await call(ws, type="join", room="duo:x")) is None
        full = await call(clients[2], type="join", room="duo:x")
        assert full["cause"] == "room_full" and full["code"] == 1013
        assert outcome(await call(clients[0], type="join", room="duo:x")) is None  # (again)
        await clients[1].close()
        await eventually(lambda: len(server.hub.get_room_members("duo:x")) == 1)
        assert outcome(await call(clients[2], type="join", room="duo:x")) is None
        ws = clients[0]
        for room in ("chat:a", "chat:b", "other", "chat:b"):
            assert outcome(await call(ws, type="join", room=room)) is None
        many = await call(ws, type="join", room="chat:c")
        assert many["cause"] == "too_many_rooms" and many["code"] == 1008
        assert "at most 2 rooms of chat" in many["error"]
        _, body = await http_get(server.port, "/metrics")
        assert b'roomcast_refusals_total{action="join",cause="room_full"} 1.0' in body
        assert b'roomcast_refusals_total{action="join",cause="too_many_rooms"} 1.0' in body
        for ws in (clients[0], clients[2]):
            await ws.close()


async def test_history_per_namespace() -> None:
    """A namespace keeps its own number of messages, or none, over the server's setting."""
    namespaces = {"short": {"history_size": 2}, "none": {"history_size": 0}}
    async with serving(namespaces, auth=False, history_size=5) as server:
        ws = await client(server, None, "/ws?user_id=ann")
        for room in ("short:x", "none:x", "long"):
            assert outcome(await call(ws, type="join", room=room)) is None
            for i in range(4):
                assert outcome(await call(ws, type="publish", room=room, data=i)) is None
        assert len((await call(ws, type="history", room="short:x"))["messages"]) == 2
        assert len((await call(ws, type="history", room="long"))["messages"]) == 4
        assert "no history" in (await call(ws, type="history", room="none:x"))["error"]
        await ws.close()
