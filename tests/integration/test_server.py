"""The native server end to end: client protocol, HTTP routes, limits, slow consumers, shutdown.

Each test runs a real ``Server`` (picows) on a free loopback port in the test's event loop and
talks to it with real websockets clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from roomcast import CloseCode
from roomcast.brokers.envelope import Target
from roomcast.frame import encode
from roomcast.server import Server, ServerConfig
from tests.support import connect, eventually, listening_socket, recv, seconds


@contextlib.asynccontextmanager
async def running(sndbuf: int | None = None, **options: Any) -> AsyncIterator[Server]:
    server = Server(ServerConfig(port=0, **options))
    await server.start(listening_socket(sndbuf) if sndbuf else None)
    try:
        yield server
    finally:
        await server.stop()


def url(server: Server, path: str = "/ws") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


async def call(client: ClientConnection, **message: Any) -> dict[str, Any]:
    """Send a command and return the decoded answer."""
    await client.send(json.dumps(message))
    answer = json.loads(await recv(client))
    assert isinstance(answer, dict)
    return answer


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    async with asyncio.timeout(seconds(5)):
        data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_join_publish_leave_round_trip() -> None:
    """Members get each other's publishes (not their own); every command is acknowledged."""
    async with running() as server:
        alice = await connect(url(server, "/ws/lobby?user_id=alice"))
        bob = await connect(url(server, "/ws?user_id=bob"))
        joined = await call(bob, type="join", room="lobby", event_id="j1")
        assert joined["type"] == "ack" and joined["ack_event_id"] == "j1"
        ack = await call(alice, type="publish", room="lobby", data={"t": "hi"}, event_id="p1")
        assert ack["type"] == "ack" and ack["ack_event_id"] == "p1"
        delivered = json.loads(await recv(bob))
        assert delivered["type"] == "room_message" and delivered["room"] == "lobby"
        assert delivered["sender"] == "alice" and delivered["data"] == {"t": "hi"}
        assert delivered["event_id"] == "p1"
        assert (await call(bob, type="leave", room="lobby", event_id="l1"))["type"] == "ack"
        assert server.hub.get_room_members("lobby")[0].user_id == "alice"
        pong = await call(bob, type="ping", event_id="k1")
        assert pong["type"] == "pong" and pong["ping_event_id"] == "k1"
        with pytest.raises(TimeoutError):
            await recv(alice, timeout_units=0.1)
        await alice.close()
        await bob.close()
        await eventually(lambda: server.hub.active_connections == 0)


@pytest.mark.parametrize(
    ("frame", "code", "fragment"),
    [
        ("{not json", 1003, "not valid JSON"),
        ('{"type": "teleport"}', 1003, "unknown message type"),
        ('{"type": "join", "room": 7}', 1003, "must be a string"),
        ('{"type": "publish", "room": "elsewhere", "event_id": "p"}', 1008, "not in room"),
        ('{"type": "leave", "room": "elsewhere", "event_id": "l"}', 1008, "not in room"),
        ('{"type": "join", "room": ""}', 1008, "non-empty"),
        ('{"type": "ack", "ack_event_id": "x"}', 1003, "cannot send 'ack'"),
    ],
)
async def test_bad_commands_get_errors_and_the_connection_survives(
    frame: str, code: int, fragment: str
) -> None:
    """Each refused command gets an ErrorMessage; the client stays connected and usable."""
    async with running() as server:
        client = await connect(url(server, "/ws/home"))
        await client.send(frame)
        answer = json.loads(await recv(client))
        assert answer["type"] == "error" and answer["code"] == code
        assert fragment in answer["error"]
        assert (await call(client, type="ping"))["type"] == "pong"
        await client.close()


@pytest.mark.parametrize(
    ("send", "code"),
    [
        (b"\x00binary", CloseCode.UNSUPPORTED_DATA),
        ("x" * 2000, CloseCode.MESSAGE_TOO_BIG),
    ],
)
async def test_unacceptable_frames_close_only_the_sender(send: str | bytes, code: int) -> None:
    """Binary and oversize frames close the sender with 1003/1009; a neighbour is unaffected."""
    async with running(max_message_size=1024) as server:
        sender = await connect(url(server, "/ws/r"))
        neighbour = await connect(url(server, "/ws/r"))
        await sender.send(send)
        with pytest.raises(ConnectionClosed):
            await recv(sender)
        assert sender.close_code == code
        assert (await call(neighbour, type="publish", room="r", data=1))["type"] == "ack"
        await neighbour.close()
        await eventually(lambda: server.hub.active_connections == 0)


async def test_invalid_utf8_is_closed_with_1007() -> None:
    """A text frame that is not UTF-8 closes the sender with 1007."""
    async with running() as server:
        client = await connect(url(server))
        # websockets would refuse to send invalid UTF-8 as text; write the frame by hand.
        client.protocol.send_frame(_text_frame(b"\xff\xfe"))
        client.transport.write(b"".join(client.protocol.data_to_send()))
        with pytest.raises(ConnectionClosed):
            await recv(client)
        assert client.close_code == CloseCode.INVALID_PAYLOAD


def _text_frame(payload: bytes) -> Any:
    from websockets.frames import Frame, Opcode

    return Frame(Opcode.TEXT, payload)


async def test_fragmented_messages_are_reassembled() -> None:
    """A message sent in several frames is handled as one."""
    async with running() as server:
        client = await connect(url(server))
        parts = ['{"type": "ping", ', '"event_id": ', '"frag"}']
        await client.send(iter(parts))
        assert (json.loads(await recv(client)))["ping_event_id"] == "frag"
        await client.close()


async def test_http_routes() -> None:
    """/healthz and /readyz answer 200, other paths 404, bad user ids 400."""
    async with running() as server:
        assert await http_get(server.port, "/healthz") == (200, b"ok\n")
        assert await http_get(server.port, "/readyz") == (200, b"ready\n")
        assert (await http_get(server.port, "/nope"))[0] == 404
        with pytest.raises(InvalidStatus) as refused:
            await connect(url(server, "/ws?user_id=" + "u" * 300))
        assert refused.value.response.status_code == 400


async def test_connection_cap_answers_503() -> None:
    """Beyond max_connections, upgrades are refused with HTTP 503."""
    async with running(max_connections=2) as server:
        clients = [await connect(url(server)) for _ in range(2)]
        with pytest.raises(InvalidStatus) as refused:
            await connect(url(server))
        assert refused.value.response.status_code == 503
        for client in clients:
            await client.close()


async def test_slow_consumer_is_closed_with_4008_and_others_get_everything() -> None:
    """A client that stops reading is closed at the buffer limit; a reader gets all frames."""
    async with running(sndbuf=8192, send_buffer_limit=64 * 1024, close_timeout=30) as server:
        reader = await connect(url(server, "/ws/r"))
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        stalled = await connect(url(server, "/ws/r"), sock=sock, max_queue=1)
        await eventually(lambda: server.hub.active_connections == 2)
        got = 0

        async def read_all() -> None:
            nonlocal got
            async for _ in reader:
                got += 1
                if got == 400:
                    return

        task = asyncio.create_task(read_all())
        payload = "x" * 4096
        for _ in range(400):
            server.hub.deliver(Target.ROOM, "r", encode(payload))
            await asyncio.sleep(0)
        async with asyncio.timeout(seconds(20)):
            await task
        assert server.hub.stats.slow_consumer_closes == 1
        assert server.hub.active_connections == 1
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(seconds(20)):
                async for _ in stalled:
                    pass
        assert stalled.close_code == CloseCode.SLOW_CONSUMER
        await reader.close()


async def test_stop_closes_every_client_with_1001_and_refuses_new_ones() -> None:
    """stop() closes all clients with 1001 (reconnect hint) and stops listening."""
    server = Server(ServerConfig(port=0, shutdown_timeout=5))
    await server.start()
    address = url(server, "/ws/r")
    clients = [await connect(address) for _ in range(50)]
    await eventually(lambda: server.hub.active_connections == 50)
    async with asyncio.timeout(seconds(10)):
        await server.stop()
    for client in clients:
        with pytest.raises(ConnectionClosed):
            await recv(client)
        assert client.close_code == CloseCode.GOING_AWAY
        assert "reconnect" in (client.close_reason or "")
    assert server.hub.active_connections == 0
    with pytest.raises(OSError):
        await connect(address)


async def http_request(port: int, raw: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    async with asyncio.timeout(seconds(5)):
        data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def publish_request(body: bytes, key: str | None = "sesame") -> bytes:
    key_header = f"X-API-Key: {key}\r\n" if key is not None else ""
    return (
        f"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"{key_header}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def test_metrics_exposition_parses_and_counts() -> None:
    """/metrics is valid Prometheus text whose counters follow the traffic."""
    from prometheus_client.parser import text_string_to_metric_families

    async with running() as server:
        client = await connect(url(server, "/ws/r"))
        await call(client, type="ping")
        await client.send("{bad")
        await recv(client)
        status, body = await http_get(server.port, "/metrics")
        assert status == 200
        samples = {
            sample.name: sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
        }
        assert samples["roomcast_connections"] == 1
        assert samples["roomcast_rooms"] == 1
        assert samples["roomcast_messages_in_total"] == 2
        assert samples["roomcast_messages_out_total"] == 2
        assert samples["roomcast_protocol_errors_total"] == 1
        assert samples["roomcast_slow_consumer_closes_total"] == 0
        assert "roomcast_send_buffer_bytes" in samples
        await client.close()


async def test_publish_api_requires_the_key_and_sends_nothing_without_it() -> None:
    """Missing or wrong X-API-Key -> 401 and no client gets anything."""
    async with running(api_port=0, api_key="sesame") as server:
        client = await connect(url(server, "/ws/r"))
        body = json.dumps({"room": "r", "data": 1}).encode()
        for key in (None, "wrong", "sesam", "sesame!"):
            status, _ = await http_request(server.api_port, publish_request(body, key))
            assert status == 401
        with pytest.raises(TimeoutError):
            await recv(client, timeout_units=0.2)
        await client.close()


async def test_publish_api_delivers_to_rooms_and_users() -> None:
    """A keyed publish reaches a room's members or all of a user's connections."""
    async with running(api_port=0, api_key="sesame") as server:
        member = await connect(url(server, "/ws/r?user_id=a"))
        phone = await connect(url(server, "/ws?user_id=b"))
        laptop = await connect(url(server, "/ws?user_id=b"))
        await eventually(lambda: server.hub.active_connections == 3)
        room_body = json.dumps({"room": "r", "data": {"n": 1}}).encode()
        status, answer = await http_request(server.api_port, publish_request(room_body))
        got = json.loads(await recv(member))
        assert got["type"] == "room_message" and got["data"] == {"n": 1} and got["sender"] is None
        # (A room with history: the answer also says where the message is stored.)
        position = {"epoch": got["epoch"], "offset": 1}
        assert (status, json.loads(answer)) == (200, {"delivered": 1, "position": position})
        user_body = json.dumps({"user_id": "b", "data": "hi"}).encode()
        assert (await http_request(server.api_port, publish_request(user_body)))[1] == (
            b'{"delivered": 2}\n'
        )
        for device in (phone, laptop):
            got = json.loads(await recv(device))
            assert got["type"] == "message" and got["data"] == "hi"
        batch_body = json.dumps({"room": "r", "batch": [1, 2, 3]}).encode()
        answer = (await http_request(server.api_port, publish_request(batch_body)))[1]
        assert json.loads(answer) == {"delivered": 3, "position": {**position, "offset": 4}}
        assert [json.loads(await recv(member))["data"] for _ in range(3)] == [1, 2, 3]
        bad_batch = json.dumps({"room": "r", "batch": [1, float("nan")]}).encode()
        assert (await http_request(server.api_port, publish_request(bad_batch)))[0] == 400
        with pytest.raises(TimeoutError):
            await recv(member, timeout_units=0.1)
        for client in (member, phone, laptop):
            await client.close()


async def test_a_batch_bigger_than_a_send_buffer_is_refused_whole() -> None:
    """Delivered at once, it would close every recipient as a slow consumer (4008)."""
    async with running(api_port=0, api_key="sesame", send_buffer_limit=64 * 1024) as server:
        member = await connect(url(server, "/ws/r?user_id=a"))
        too_big = json.dumps({"room": "r", "batch": ["x" * 1000] * 40}).encode()
        status, body = await http_request(server.api_port, publish_request(too_big))
        assert status == 413 and b"split them" in body
        fits = json.dumps({"room": "r", "batch": ["x" * 1000] * 20}).encode()
        answer = (await http_request(server.api_port, publish_request(fits)))[1]
        assert json.loads(answer)["delivered"] == 20
        assert len([await recv(member) for _ in range(20)]) == 20
        assert server.hub.stats.slow_consumer_closes == 0
        await member.close()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (publish_request(b"{nope"), 400),
        (publish_request(b"[1]"), 400),
        (publish_request(b'{"room": "r", "data": 1, "batch": [1]}'), 400),
        (publish_request(b'{"room": "r", "batch": []}'), 400),
        (publish_request(b'{"room": "r", "batch": {"a": 1}}'), 400),
        (publish_request(b'{"room": "r", "user_id": "u", "data": 1}'), 400),
        (publish_request(b'{"room": "", "data": 1}'), 400),
        (publish_request(b'{"room": "r", "data": NaN}'), 400),
        (b"GET /api/publish HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
        (b"GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(100)) + b"\r\n", 431),
        (
            b"POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: sesame\r\n"
            b"Content-Length: 2000000\r\n\r\n" + b"x" * 2_000_000,
            413,
        ),
    ],
)
async def test_api_answers_bad_requests_with_4xx(raw: bytes, status: int) -> None:
    """Malformed, misrouted, oversized and header-flooded requests get their 4xx."""
    async with running(api_port=0, api_key="sesame") as server:
        assert (await http_request(server.api_port, raw))[0] == status
        assert (await http_request(server.api_port, b"GET /readyz HTTP/1.1\r\n\r\n"))[0] == 200


def _raw_frames(client: ClientConnection, *frames: Any) -> None:
    """Write frames as they are, bypassing websockets' own checks on what it sends."""
    for frame in frames:
        client.protocol.send_frame(frame)
    client.transport.write(b"".join(client.protocol.data_to_send()))


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        (["cont:x"], CloseCode.PROTOCOL_ERROR),
        (["text-start:{", "text:{}"], CloseCode.PROTOCOL_ERROR),
        (["text-start:" + "x" * 800, "cont-more:" + "x" * 800], CloseCode.MESSAGE_TOO_BIG),
        (["text-start:{", *["cont-more:"] * 129], CloseCode.MESSAGE_TOO_BIG),
    ],
)
async def test_broken_fragmentation_closes_the_sender(frames: list[str], code: int) -> None:
    """A stray continuation, a new message inside a fragmented one, fragments adding up past
    the size limit, or more fragments than the cap close the sender with 1002/1002/1009/1009."""
    from websockets.frames import Frame as WsFrame
    from websockets.frames import Opcode

    kinds = {
        "cont": (Opcode.CONT, True),
        "cont-more": (Opcode.CONT, False),
        "text-start": (Opcode.TEXT, False),
        "text": (Opcode.TEXT, True),
    }
    async with running(max_message_size=1024) as server:
        client = await connect(url(server))
        built = []
        for spec in frames:
            kind, _, payload = spec.partition(":")
            opcode, fin = kinds[kind]
            built.append(WsFrame(opcode, payload.encode(), fin=fin))
        _raw_frames(client, *built)
        with pytest.raises(ConnectionClosed):
            await recv(client)
        assert client.close_code == code


async def test_a_burst_in_one_iteration_arrives_whole_and_in_order() -> None:
    """Ten broadcasts queued in one loop iteration reach every member, in order."""
    async with running() as server:
        clients = [await connect(url(server, "/ws/r")) for _ in range(5)]
        await eventually(lambda: server.hub.active_connections == 5)
        for seq in range(10):
            server.hub.deliver(Target.ROOM, "r", encode(str(seq)))
        for client in clients:
            assert [await recv(client) for _ in range(10)] == [str(i) for i in range(10)]
            await client.close()


async def test_heartbeat_drops_a_client_that_stops_answering_and_keeps_the_others() -> None:
    """A client that completed the handshake but answers no ping (a raw socket that went
    quiet) is dropped within ping_interval + pong_timeout and counted; a websockets client,
    which answers protocol pings, stays."""
    interval = seconds(0.2)
    async with running(ping_interval=interval, pong_timeout=interval) as server:
        healthy = await connect(url(server, "/ws/r?user_id=ok"))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"GET /ws/r?user_id=mute HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        async with asyncio.timeout(seconds(5)):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        await eventually(lambda: server.hub.active_connections == 2)
        began = asyncio.get_running_loop().time()
        await eventually(lambda: server.hub.active_connections == 1, timeout_units=10)
        assert asyncio.get_running_loop().time() - began <= 2 * interval + seconds(1.5)
        assert server.hub.get_user_connections("ok")
        assert server.counters.heartbeat_timeouts == 1
        assert server.heartbeat is not None and server.heartbeat.watched == 1
        await asyncio.sleep(3 * interval)
        assert server.hub.get_user_connections("ok")  # still answering
        health = server.heartbeat.get_all_health_metrics()
        (only,) = health.values()
        assert only.alive and only.rtt is not None
        writer.close()
        await healthy.close()


JWT_SECRET = "serve-secret-serve-secret-serve-secret"


def jwt_token(**claims: Any) -> str:
    import time

    import jwt

    payload = {"sub": "alice", "exp": int(time.time()) + 60, **claims}
    return jwt.encode(payload, JWT_SECRET, algorithm="HS256")


async def test_jwt_on_the_upgrade_refuses_before_anything_is_registered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Missing, expired and forged tokens get HTTP 401 with nothing registered and the token
    never logged; a valid one (header, subprotocol or query) connects as its 'sub', whatever
    ?user_id= says."""
    from websockets.exceptions import InvalidStatus

    from roomcast import JWTAuthenticator

    expired = jwt_token(exp=1)
    async with running(authenticator=JWTAuthenticator(JWT_SECRET)) as server:
        for headers in (
            {},
            {"Authorization": f"Bearer {expired}"},
            {"Authorization": "Bearer x.y.z"},
        ):
            with pytest.raises(InvalidStatus) as refused:
                await connect(url(server, "/ws/r?user_id=mallory"), additional_headers=headers)
            assert refused.value.response.status_code == 401
            assert expired.encode() not in refused.value.response.body
        assert server.hub.active_connections == 0
        assert server.counters.auth_failures == 3
        assert expired not in caplog.text

        by_header = await connect(
            url(server, "/ws/r?user_id=mallory"),
            additional_headers={"Authorization": f"Bearer {jwt_token()}"},
        )
        by_protocol = await connect(
            url(server, "/ws/r"),
            subprotocols=["bearer", jwt_token(sub="bob")],
        )
        assert by_protocol.subprotocol == "bearer"
        by_query = await connect(url(server, f"/ws/r?token={jwt_token(sub='carol')}"))
        await eventually(lambda: server.hub.active_connections == 3)
        users = {c.user_id for c in server.hub.get_room_members("r")}
        assert users == {"alice", "bob", "carol"}
        for client in (by_header, by_protocol, by_query):
            await client.close()

    async with running(authenticator=JWTAuthenticator(JWT_SECRET), token_in_query=False) as server:
        with pytest.raises(InvalidStatus) as refused:
            await connect(url(server, f"/ws/r?token={jwt_token()}"))
        # It says what happened (query tokens are off), not that a token is missing.
        body = refused.value.response.body or b""
        assert refused.value.response.status_code == 401
        assert b"query string are disabled" in body and b"Authorization: Bearer" in body


async def test_a_custom_authenticator_may_return_a_user_id_or_claims_or_none() -> None:
    """The common ways to write one: the user id, the claims (``sub``), None to refuse."""

    def authenticator(token: str) -> object:
        return {"ann": "ann", "bob": {"sub": "bob", "exp": 4e9}}.get(token)

    async with running(authenticator=authenticator) as server:
        ann = await connect(url(server, "/ws/r?token=ann"))
        bob = await connect(url(server, "/ws/r?token=bob"))
        await eventually(lambda: server.hub.active_connections == 2)
        assert {c.user_id for c in server.hub.get_room_members("r")} == {"ann", "bob"}
        with pytest.raises(InvalidStatus) as refused:
            await connect(url(server, "/ws/r?token=eve"))
        assert refused.value.response.status_code == 401
        for client in (ann, bob):
            await client.close()


async def test_the_leeway_that_admits_a_token_also_delays_its_expiry() -> None:
    """A token expired 5 s ago is within a 30 s leeway: admitted, and not warned or closed at
    once (the skew tolerated at connect is tolerated at expiry too)."""
    import time

    from roomcast import JWTAuthenticator

    expired = int(time.time()) - 5
    async with running(
        authenticator=JWTAuthenticator(JWT_SECRET, leeway=30), token_grace=seconds(0.2)
    ) as server:
        client = await connect(url(server, f"/ws/r?token={jwt_token(sub='ann', exp=expired)}"))
        await eventually(lambda: server.hub.active_connections == 1)
        assert (await call(client, type="ping"))["type"] == "pong"
        with pytest.raises(TimeoutError):  # no 4001 warning, no close
            await recv(client, timeout_units=1)
        assert server.counters.token_expiries == 0
        await client.close()


async def test_token_expiry_warns_then_closes_unless_a_fresh_token_arrives() -> None:
    """A client whose token expires is told (error 4001) and closed with 4001 after the
    grace period; one that sends a fresh token for the same user stays; a token for another
    user, or a bad one, is refused without changing anything."""
    import time

    from roomcast import JWTAuthenticator

    soon = int(time.time()) + 2  # at least 1 s away: the refusals below come first
    async with running(
        authenticator=JWTAuthenticator(JWT_SECRET, leeway=0), token_grace=seconds(0.5)
    ) as server:
        lapsing = await connect(url(server, f"/ws/r?token={jwt_token(sub='ann', exp=soon)}"))
        renewing = await connect(url(server, f"/ws/r?token={jwt_token(sub='bob', exp=soon)}"))
        assert (await call(renewing, type="auth", token=jwt_token(sub="eve")))["type"] == "error"
        assert (await call(renewing, type="auth", token="x.y.z"))["type"] == "error"
        warning = json.loads(await recv(renewing, timeout_units=5))
        assert warning["type"] == "error" and warning["code"] == 4001
        reply = await call(renewing, type="auth", token=jwt_token(sub="bob"))
        assert reply["type"] == "ack"
        notice = json.loads(await recv(lapsing, timeout_units=5))
        assert notice["code"] == CloseCode.TOKEN_EXPIRED
        with pytest.raises(ConnectionClosed):
            await recv(lapsing, timeout_units=5)
        assert lapsing.close_code == CloseCode.TOKEN_EXPIRED
        assert server.counters.token_expiries == 1
        await asyncio.sleep(seconds(1))
        assert server.hub.get_user_connections("bob")  # renewed: still connected
        await renewing.close()


async def test_foreign_origins_are_refused() -> None:
    """With an Origin allow-list, a browser upgrade from another Origin gets HTTP 403 and
    is counted; listed Origins and clients without an Origin connect."""
    async with running(allowed_origins=frozenset({"https://chat.example"})) as server:
        tricks = (
            "https://evil.example",
            "https://chat.example.evil.example",  # suffix
            "https://evil-chat.example",
            "HTTPS://CHAT.EXAMPLE",  # case
            "https://chat.example:443",
            "null",
        )
        for origin in tricks:
            with pytest.raises(InvalidStatus) as refused:
                await connect(url(server), origin=origin)
            assert refused.value.response.status_code == 403
        good = await connect(url(server), origin="https://chat.example")
        plain = await connect(url(server))
        await eventually(lambda: server.hub.active_connections == 2)
        assert server.counters.refused_upgrades == len(tricks)
        await good.close()
        await plain.close()


async def test_limits_rate_rooms_and_connections_per_user(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A flooding client is told once (1008), its excess dropped, then closed with 1008 while
    a neighbour keeps being served; a join beyond the room cap and a connection beyond the
    per-user cap are refused."""
    caplog.set_level(logging.INFO, "roomcast")  # (a client's excess is logged at INFO)
    async with running(
        rate_limit=20, rate_burst=5, max_rooms_per_connection=2, max_connections_per_user=2
    ) as server:
        flooder = await connect(url(server, "/ws/r?user_id=flood"))
        neighbour = await connect(url(server, "/ws/r?user_id=calm"))
        await eventually(lambda: server.hub.active_connections == 2)
        for n in range(200):
            await flooder.send(json.dumps({"type": "publish", "room": "r", "data": n}))
        answers = []
        with contextlib.suppress(ConnectionClosed):
            while True:
                answers.append(json.loads(await recv(flooder)))
        assert flooder.close_code == CloseCode.POLICY_VIOLATION
        errors = [a for a in answers if a["type"] == "error"]
        assert len(errors) == 1 and "rate limit" in errors[0]["error"]
        assert server.counters.rate_limited >= 50
        assert caplog.text.count("rate_limited #") == 1  # one line per episode
        assert "rate_limit_close" in caplog.text and '"data"' not in caplog.text
        relayed = []
        with contextlib.suppress(TimeoutError):
            while True:
                relayed.append(json.loads(await recv(neighbour, timeout_units=0.3)))
        assert 5 <= len(relayed) < 200  # the burst got through, the flood did not
        assert (await call(neighbour, type="ping"))["type"] == "pong"  # still served

        assert (await call(neighbour, type="join", room="a"))["type"] == "ack"
        refused = await call(neighbour, type="join", room="b")
        assert refused["type"] == "error" and "at most 2 rooms" in refused["error"]
        assert (await call(neighbour, type="join", room="a"))["type"] == "ack"  # already in

        second = await connect(url(server, "/ws/r?user_id=calm"))
        with pytest.raises(InvalidStatus) as too_many:
            await connect(url(server, "/ws/r?user_id=calm"))
        assert too_many.value.response.status_code == 403
        for client in (neighbour, second):
            await client.close()


async def handshake(port: int, request: bytes) -> bytes:
    """Send raw bytes as an upgrade request; what the server answers before closing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(seconds(5)):
            return await reader.read(65536)
    except ConnectionResetError:
        return b""  # the server hung up on it: also a refusal
    finally:
        writer.close()


UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


@pytest.mark.parametrize(
    "request_bytes",
    [
        UPGRADE + b"".join(b"X-Filler-%d: y\r\n" % n for n in range(5000)) + b"\r\n",
        UPGRADE
        + b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: "
        + b"p," * 32768
        + b"\r\n\r\n",
        UPGRADE + b"Sec-WebSocket-Version: 99\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(500),  # a TLS ClientHello
        b"GET /ws HTTP/1.1\r\n" + b"A" * 70000 + b"\r\n\r\n",
    ],
    ids=["5000-headers", "64KiB-protocol", "bad-version", "missing-key", "tls", "huge-line"],
)
async def test_handshake_abuse_is_refused_and_the_server_keeps_serving(
    request_bytes: bytes,
) -> None:
    """Floods of headers, a 64 KiB Sec-WebSocket-Protocol, a bad version, a missing key,
    TLS bytes or a 70 KB line: answered with an HTTP error or a closed socket, quickly, with
    nothing registered; a normal client connects right after.  (Bytes that never make a
    complete request, like TLS, are dropped after the handshake timeout.)"""
    async with running(handshake_timeout=seconds(1)) as server:
        answer = await handshake(server.port, request_bytes)
        assert not answer.startswith(b"HTTP/1.1 101")
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4") or answer.startswith(b"HTTP/1.1 5")
        assert server.hub.active_connections == 0
        client = await connect(url(server, "/ws/r?user_id=ok"))
        assert (await call(client, type="ping"))["type"] == "pong"
        await client.close()


async def test_ids_with_control_characters_or_too_long_are_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 10 KB user id, one of 65 four-byte characters (260 bytes) and one with control
    characters are refused with 400 (never stored, never logged raw); 64 such characters fit."""
    import urllib.parse

    async with running() as server:
        nasty = "evil\x1b[31m\r\nINJECTED"
        for user_id in ("u" * 10_000, "\U0001f600" * 65, nasty, "a\x00b"):
            with pytest.raises(InvalidStatus) as refused:
                await connect(url(server, "/ws/r?user_id=" + urllib.parse.quote(user_id)))
            assert refused.value.response.status_code == 400
        assert b"control characters" in refused.value.response.body
        client = await connect(url(server, "/ws/r?user_id=" + urllib.parse.quote("😀" * 64)))
        await eventually(lambda: server.hub.active_connections == 1)
        await client.close()
        assert "\x1b" not in caplog.text and "\r\nINJECTED" not in caplog.text


async def test_joins_past_max_rooms_are_refused_with_1013() -> None:
    """At ``max_rooms`` a join that would open a room gets error 1013 (and /ws/ROOM gets
    503); joining an existing room still works, and a room freed makes room for a new one."""
    async with running(max_rooms=3) as server:
        alice = await connect(url(server, "/ws?user_id=alice"))
        for room in ("a", "b", "c"):
            assert (await call(alice, type="join", room=room))["type"] == "ack"
        refused = await call(alice, type="join", room="d", event_id="j4")
        assert refused["type"] == "error" and refused["code"] == CloseCode.TRY_AGAIN_LATER
        assert "maximum of 3 rooms" in refused["error"] and refused["ref_event_id"] == "j4"
        with pytest.raises(InvalidStatus) as at_capacity:
            await connect(url(server, "/ws/d?user_id=bob"))
        assert at_capacity.value.response.status_code == 503
        bob = await connect(url(server, "/ws/a?user_id=bob"))  # an existing room: fine
        assert (await call(alice, type="leave", room="c"))["type"] == "ack"
        assert (await call(alice, type="join", room="d"))["type"] == "ack"
        assert sorted(server.hub.active_rooms) == ["a", "b", "d"]
        await alice.close()
        await bob.close()


@pytest.mark.parametrize(
    ("room", "why"),
    [
        ("x" * 257, "257 bytes"),
        ("\u00e9" * 129, "258 bytes"),
        ("a\x00b", "control characters"),
        ("line\nbreak", "control characters"),
        ("\x85next-line", "control characters"),
    ],
)
async def test_room_ids_are_limited_in_bytes_and_free_of_control_characters(
    room: str, why: str
) -> None:
    """A join of a room id over 256 UTF-8 bytes or with a control character gets an error
    that says which."""
    async with running() as server:
        client = await connect(url(server, "/ws?user_id=u"))
        answer = await call(client, type="join", room=room)
        assert answer["type"] == "error" and why in answer["error"]
        assert server.hub.active_rooms == []
        await client.close()


async def test_cross_user_isolation_under_concurrent_sends() -> None:
    """Concurrent sends to 50 users (two devices each) through the API: every device gets
    all of its user's messages, in order, and none of anybody else's."""
    async with running(api_port=0, api_key="k") as server:
        devices = {
            f"user{u}": [await connect(url(server, f"/ws?user_id=user{u}")) for _ in range(2)]
            for u in range(50)
        }
        await eventually(lambda: server.hub.active_connections == 100)

        async def send_all(user: str) -> None:
            for n in range(10):
                body = json.dumps({"user_id": user, "data": f"{user}:{n}"}).encode()
                status, _ = await http_request(server.api_port, publish_request(body, "k"))
                assert status == 200

        await asyncio.gather(*(send_all(user) for user in devices))
        for user, sockets in devices.items():
            for ws in sockets:
                got = [json.loads(await recv(ws))["data"] for _ in range(10)]
                assert got == [f"{user}:{n}" for n in range(10)]
        for sockets in devices.values():
            for ws in sockets:
                with pytest.raises(TimeoutError):
                    await recv(ws, timeout_units=0.05)
                await ws.close()


async def test_reconnect_storm_after_a_restart() -> None:
    """1,000 clients of a server that goes down reconnect all at once to its successor on
    the same port: every one gets in, nothing is refused."""
    sock = listening_socket()
    port = sock.getsockname()[1]
    first = Server(ServerConfig(port=0))
    await first.start(sock)
    clients = await asyncio.gather(
        *(connect(f"ws://127.0.0.1:{port}/ws/r?user_id=u{n}") for n in range(1000))
    )
    await first.stop()
    for client in clients:
        with contextlib.suppress(ConnectionClosed):
            await recv(client, timeout_units=5)
    successor = Server(ServerConfig(port=0))
    same_port = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    same_port.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    same_port.bind(("127.0.0.1", port))
    same_port.listen(4096)
    same_port.setblocking(False)
    await successor.start(same_port)
    try:
        began = asyncio.get_running_loop().time()
        again = await asyncio.gather(
            *(connect(f"ws://127.0.0.1:{port}/ws/r?user_id=u{n}") for n in range(1000))
        )
        await eventually(lambda: successor.hub.active_connections == 1000)
        elapsed = asyncio.get_running_loop().time() - began
        print(f"reconnect storm: 1000 clients back in {elapsed:.2f} s")
        assert successor.counters.refused_upgrades == 0
        for client in again:
            await client.close()
    finally:
        await successor.stop()


async def test_slow_consumer_closes_are_logged_within_a_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """25 clients that never read are all closed 4008, and the log has 20 lines for them
    (the budget), not one per close."""
    from tests.serve_process import RawClient

    async with running(send_buffer_limit=64 * 1024) as server:
        stalled = [await RawClient.connect(server.port, "/ws/r?user_id=slow") for _ in range(25)]
        await eventually(lambda: server.hub.active_connections == 25)
        with caplog.at_level(logging.WARNING, "roomcast"):
            chunk = "x" * 32_000
            for _ in range(200):
                if server.hub.stats.slow_consumer_closes == 25:
                    break
                server.hub.deliver(Target.ROOM, "r", encode(chunk))
                await asyncio.sleep(0.01)
        assert server.hub.stats.slow_consumer_closes == 25
        lines = [r for r in caplog.records if "slow_consumer" in r.getMessage()]
        assert len(lines) == 20
        for client in stalled:
            client.abort()


async def test_a_slow_consumer_that_never_reads_is_reset_after_close_timeout() -> None:
    """A client closed with 4008 that reads nothing is reset once close_timeout passes: its
    connection is not ESTABLISHED at either end any more (the kernel drops the unsent
    bytes instead of holding them for minutes)."""
    from tests.integration.test_slow_consumer_abort import established, stalled_client

    async with running(sndbuf=4096, send_buffer_limit=64 * 1024, close_timeout=0.5) as server:
        stalled = [await stalled_client(f"ws://127.0.0.1:{server.port}", "/ws/r") for _ in range(4)]
        await eventually(lambda: server.hub.active_connections == 4)
        chunk = "x" * 16_000
        for _ in range(200):
            if server.hub.stats.slow_consumer_closes == 4:
                break
            server.hub.deliver(Target.ROOM, "r", encode(chunk))
            await asyncio.sleep(0.005)
        assert server.hub.stats.slow_consumer_closes == 4
        await eventually(
            lambda: established(server.port, stalled) == 0, what="stalled sockets reset"
        )
        for sock in stalled:
            sock.close()


async def test_an_authenticator_that_raises_gets_500_and_the_server_goes_on() -> None:
    """A custom authenticator with a bug (it raises something other than
    AuthenticationError) answers the upgrade with HTTP 500, not a dropped connection."""

    def broken(token: str) -> Any:
        raise ValueError("bug in the application's authenticator")

    async with running(authenticator=broken) as server:
        for _ in range(2):
            with pytest.raises(InvalidStatus) as refused:
                await connect(url(server, "/ws"), additional_headers={"Authorization": "Bearer t"})
            assert refused.value.response.status_code == 500
            assert b"authenticator failed" in refused.value.response.body
