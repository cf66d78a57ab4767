"""The Python client against real ``roomcast serve`` processes, over real sockets.

Servers are killed, drained (SIGTERM), frozen (SIGSTOP) and restarted on the same port; a TCP
proxy between a client and a server cuts the connection without a close frame, as a dropped
network does.  Every wait is bounded by ``asyncio.timeout`` in time units (``seconds``).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx
import jwt
import pytest

from roomcast.client import (
    LOCAL_HEARTBEAT_CLOSE,
    Backoff,
    Client,
    ClientClosed,
    ClientError,
    ClientState,
    ConnectionFailed,
    Disconnected,
    Event,
    Message,
    NotConnected,
    Position,
    Reconnected,
    Rejoined,
    RequestRefused,
    ServerMessage,
)
from roomcast.errors import InvalidMessage
from roomcast.testing import free_port
from tests.proxy import Cutter
from tests.redis_support import RedisServer
from tests.serve_process import metric, start_serve, stop_serve
from tests.support import eventually, running_server, seconds

FAST = Backoff(initial=0.05, maximum=0.5)
"""Reconnect quickly: the tests wait for reconnections."""

E = TypeVar("E", bound=Event)


class Served:
    """A ``roomcast serve`` process that can be killed, drained and started again on the same
    port (where its clients look for it)."""

    def __init__(self, *flags: str) -> None:
        self.flags = flags
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.http: httpx.AsyncClient | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def start(self) -> Served:
        self.process, self.port, self.http = await start_serve(*self.flags, port=self.port)
        return self

    async def metric(self, name: str) -> float:
        assert self.http is not None
        return await metric(self.http, name)

    async def kill(self) -> None:
        """SIGKILL: the kernel closes the clients' sockets, no close frame."""
        assert self.process is not None and self.http is not None
        self.process.kill()
        await asyncio.to_thread(self.process.wait)
        await self.http.aclose()
        self.process = self.http = None

    async def stop(self) -> None:
        """SIGTERM: clients are closed with 1001, then the process exits."""
        if self.process is not None and self.http is not None:
            await stop_serve(self.process, self.http)
        self.process = self.http = None

    def signal(self, number: int) -> None:
        assert self.process is not None
        self.process.send_signal(number)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    started: list[Served] = []

    async def start(*flags: str) -> Served:
        started.append(await Served(*flags).start())
        return started[-1]

    yield start
    for server in started:
        if server.process is not None:
            server.signal(signal.SIGCONT)
        await server.stop()


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    """Connected clients, closed after the test (``connect=False``: not connected)."""
    made: list[Client] = []

    async def make(url: str, connect: bool = True, **options: Any) -> Client:
        options.setdefault("reconnect", FAST)
        made.append(Client(url, **options))
        if connect:
            async with asyncio.timeout(seconds(10)):
                await made[-1].connect()
        return made[-1]

    yield make
    for client in made:
        await client.close()


async def next_event(client: Client, kind: type[E], units: float = 10) -> tuple[E, list[Event]]:
    """Read until an event of ``kind``; returns it and the events before it."""
    before: list[Event] = []
    async with asyncio.timeout(seconds(units)):
        while True:
            event = await client.recv()
            if isinstance(event, kind):
                return event, before
            before.append(event)


def state(client: Client) -> ClientState:
    """The client's state now (a call, so that type checkers do not keep an earlier one)."""
    return client.state


async def nothing_more(client: Client, units: float = 0.3) -> None:
    """A negative check: no event within ``units``."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(seconds(units)):
            await client.recv()


async def test_members_get_each_others_messages_and_requests_are_acknowledged(
    serve: Callable[..., Awaitable[Served]], clients: Callable[..., Awaitable[Client]]
) -> None:
    """Join, publish (acknowledged), receive; leave stops the messages; ping measures."""
    server = await serve()
    ann = await clients(server.url, user_id="ann")
    bob = await clients(server.url, user_id="bob")
    assert state(ann) is ClientState.OPEN
    joined = await ann.join("lobby")
    assert joined.room == "lobby" and not joined.recovered and joined.replayed == 0
    await bob.join("lobby")
    assert ann.rooms == ["lobby"]

    position = await ann.publish("lobby", {"text": "hi"})
    assert position is not None and position.offset == 1  # rooms keep history by default
    assert ann.position("lobby") == position  # the sender's own message is its position
    message, before = await next_event(bob, Message)
    assert before == []
    assert (message.room, message.sender, message.data) == ("lobby", "ann", {"text": "hi"})
    assert message.event_id is not None and message.timestamp is not None
    assert message.position == position == bob.position("lobby")
    assert 0 < await ann.ping() < seconds(5)

    await bob.leave("lobby")
    assert bob.rooms == []
    await ann.publish("lobby", "anyone?")
    await nothing_more(bob)
    await nothing_more(ann)  # the sender does not get its own message


async def test_refusals_raise_with_the_servers_code(
    serve: Callable[..., Awaitable[Served]], clients: Callable[..., Awaitable[Client]]
) -> None:
    """An error reply raises RequestRefused (code 1008 here); the client stays usable."""
    server = await serve()
    ann = await clients(server.url, user_id="ann")
    with pytest.raises(RequestRefused, match="not in room") as refused:
        await ann.publish("lobby", 1)
    assert refused.value.code == 1008 and refused.value.reply["type"] == "error"
    with pytest.raises(RequestRefused, match="reserved"):
        await ann.join("$secret")
    with pytest.raises(RequestRefused, match="not in room"):
        await ann.leave("lobby")
    with pytest.raises(InvalidMessage):
        await ann.publish("lobby", float("nan"))
    assert ann.rooms == [] and state(ann) is ClientState.OPEN
    await ann.join("lobby")
    assert ann.position("lobby") == Position("", 0)  # an empty room
    assert await ann.publish("lobby", 1) == ann.position("lobby")
    assert ann.duplicates == 0


async def test_a_client_needs_a_server_and_ends_when_closed(
    serve: Callable[..., Awaitable[Served]], clients: Callable[..., Awaitable[Client]]
) -> None:
    """Requests before connect() fail at once; a first connection that fails raises (and may
    be retried); a closed client ends iteration and refuses everything."""
    nobody = await clients(f"ws://127.0.0.1:{free_port()}/ws", connect=False)
    with pytest.raises(NotConnected):
        await nobody.join("lobby")
    with pytest.raises(ConnectionFailed):
        await nobody.connect()
    assert state(nobody) is ClientState.IDLE
    server = await serve("--max-connections-per-user", "1")
    ann = await clients(server.url, user_id="ann")
    other = await clients(server.url, connect=False, user_id="ann")
    with pytest.raises(ConnectionFailed, match="HTTP 403"):
        await other.connect()
    with pytest.raises(ValueError, match="ws://"):
        Client("http://127.0.0.1/ws")

    await ann.join("lobby")
    reading = asyncio.create_task(anext(aiter(ann), None))
    await ann.close()
    async with asyncio.timeout(seconds(5)):
        assert await reading is None  # iteration ended
    assert state(ann) is ClientState.CLOSED
    for request in (ann.connect(), ann.publish("lobby", 1), ann.recv()):
        with pytest.raises(ClientClosed):
            await request
    await ann.close()  # twice is fine
    async with Client(server.url, user_id="cy") as cy:
        assert state(cy) is ClientState.OPEN
    assert state(cy) is ClientState.CLOSED


async def test_the_client_comes_back_after_the_server_is_killed_and_restarted(
    serve: Callable[..., Awaitable[Served]], clients: Callable[..., Awaitable[Client]]
) -> None:
    """A connection that drops (1006) is reported once, retried with backoff until the server
    is back, and every room is rejoined.  The history in the process's memory died with it:
    a room where the client had seen a message says it was not recovered; one where it had
    seen none has nothing to recover.  A request made meanwhile waits for the connection (up
    to its ack timeout)."""
    server = await serve()
    ann = await clients(server.url, user_id="ann", ack_timeout=seconds(20))
    bob = await clients(server.url, user_id="bob")
    for room in ("lobby", "news"):
        await ann.join(room)
        await bob.join(room)
    await bob.publish("lobby", "before")
    seen, _ = await next_event(ann, Message)
    assert seen.position is not None and seen.position.offset == 1

    await server.kill()
    lost, _ = await next_event(ann, Disconnected)
    assert lost.code == 1006 and lost.will_reconnect and lost.delay is not None
    assert state(ann) is ClientState.RECONNECTING
    waiting = asyncio.create_task(ann.publish("lobby", "sent once back"))
    await server.start()

    back, before = await next_event(ann, Reconnected, units=20)
    assert back.attempts >= 1
    empty = Position("", 0)
    assert before == [Rejoined("lobby", False, 0, empty), Rejoined("news", True, 0, empty)]
    assert state(ann) is ClientState.OPEN and ann.rooms == ["lobby", "news"]
    async with asyncio.timeout(seconds(10)):
        await waiting
    await next_event(bob, Reconnected, units=20)
    await bob.publish("news", "back")
    message, _ = await next_event(ann, Message)
    assert (message.room, message.data) == ("news", "back")


async def test_a_draining_server_closes_with_1001_and_the_client_comes_back(
    serve: Callable[..., Awaitable[Served]], clients: Callable[..., Awaitable[Client]]
) -> None:
    """SIGTERM closes clients with 1001 ("reconnect"); one Disconnected, then Reconnected.
    On a server without history nothing has a position, and nothing can be recovered."""
    server = await serve("--history-size", "0")
    ann = await clients(server.url, user_id="ann")
    assert (await ann.join("lobby")).position is None
    assert await ann.publish("lobby", 1) is None
    stopping = asyncio.create_task(server.stop())
    lost, _ = await next_event(ann, Disconnected)
    assert (lost.code, lost.will_reconnect) == (1001, True)
    assert "reconnect" in lost.reason
    async with asyncio.timeout(seconds(30)):
        await stopping
    await server.start()
    _, before = await next_event(ann, Reconnected, units=20)
    assert before == [Rejoined("lobby", False, 0, None)]


@pytest.mark.parametrize(
    "history", [pytest.param("0", id="no-history"), pytest.param("1000", id="history")]
)
async def test_a_client_whose_application_does_not_read_is_cut_off_and_comes_back(
    serve: Callable[..., Awaitable[Served]],
    clients: Callable[..., Awaitable[Client]],
    history: str,
) -> None:
    """With its queue full the client stops reading the socket, so the server cuts it off as
    a slow consumer (4008) instead of the client buffering without limit; once the
    application reads again it gets what was queued, in order, then the 4008, and the client
    reconnects.  With history it recovers what the server had to drop: every message once,
    in order; without, it says it could not."""
    # (--close-timeout: the 4008 close frame waits behind the unread data, not reset)
    flags = ("--send-buffer-limit", "65536", "--rate-limit", "0", "--close-timeout", "30")
    server = await serve(*flags, "--history-size", history)
    slow = await clients(server.url, user_id="slow", max_queue=1)
    fast = await clients(server.url, user_id="fast")
    await slow.join("flood")
    await fast.join("flood")
    payload = "x" * 60_000
    sent = 0
    async with asyncio.timeout(seconds(60)):
        while await server.metric("roomcast_slow_consumer_closes_total") == 0:
            for _ in range(20):
                await fast.publish("flood", {"seq": sent, "pad": payload})
                sent += 1

    lost, before = await next_event(slow, Disconnected, units=30)
    assert (lost.code, lost.will_reconnect) == (4008, True)
    sequence = [event.data["seq"] for event in before if isinstance(event, Message)]
    assert sequence == list(range(len(sequence))) and 0 < len(sequence) < sent
    _, replay = await next_event(slow, Reconnected, units=10)
    *missed, rejoined = replay
    if history == "0":
        assert (missed, rejoined) == ([], Rejoined("flood", False, 0, None))
    else:
        sequence += [event.data["seq"] for event in missed if isinstance(event, Message)]
        assert sequence == list(range(sent)) and len(missed) == sent - len(before)
        assert rejoined == Rejoined("flood", True, len(missed), fast.position("flood"))
    await fast.publish("flood", {"seq": "after"})
    message, _ = await next_event(slow, Message)
    assert message.data == {"seq": "after"} and slow.duplicates == 0


async def test_the_client_pings_a_quiet_server_and_leaves_one_that_stopped_answering(
    serve: Callable[..., Awaitable[Served]], clients: Callable[..., Awaitable[Client]]
) -> None:
    """After ping_interval of silence the client pings; a frozen server (SIGSTOP) answers
    nothing, so the client drops the connection (4000) and reconnects once it thaws."""
    server = await serve()
    ann = await clients(
        server.url,
        user_id="ann",
        ping_interval=seconds(0.2),
        ping_timeout=seconds(1),
        connect_timeout=seconds(1),
    )
    async with asyncio.timeout(seconds(10)):
        while await server.metric("roomcast_messages_in_total") < 3:  # noqa: ASYNC110 - pings
            await asyncio.sleep(0.05)
    assert state(ann) is ClientState.OPEN

    server.signal(signal.SIGSTOP)
    lost, _ = await next_event(ann, Disconnected)
    assert (lost.code, lost.will_reconnect) == (LOCAL_HEARTBEAT_CLOSE, True)
    assert "ping" in lost.reason
    server.signal(signal.SIGCONT)
    await next_event(ann, Reconnected, units=30)


async def test_the_client_answers_a_fastapi_apps_application_pings(
    clients: Callable[..., Awaitable[Client]],
) -> None:
    """The FastAPI managers ping with messages and close a client that does not answer with
    4002 after 0.6 s here; the client answers, so it stays."""
    from tests.heartbeat_app import app

    async with running_server(app) as base:
        # This endpoint relays text frames to the room and answers no ping: no client pings.
        ann = await clients(f"{base}/ws/lobby", user_id="ann", ping_interval=0)
        await nothing_more(ann, units=2)
        assert state(ann) is ClientState.OPEN


async def test_a_token_function_keeps_the_client_past_expiry_and_a_fixed_token_does_not(
    serve: Callable[..., Awaitable[Served]], clients: Callable[..., Awaitable[Client]]
) -> None:
    """At expiry the server warns (4001); the client with a token function sends a fresh one
    and stays; the one with a fixed token is closed with 4001 after the grace, for good."""
    secret = "client-test-secret-of-32-bytes!!"
    # (No leeway: by default 30 s of it would also delay the expiry this test waits for.)
    server = await serve("--jwt-secret", secret, "--token-grace", "2", "--jwt-leeway", "0")
    expiry = int(time.time() + seconds(3))

    def token(user: str, expires: float) -> str:
        return jwt.encode({"sub": user, "exp": int(expires)}, secret, "HS256")

    fresh = [token("ann", expiry), token("ann", expiry + 600)]
    asked = 0

    async def next_token() -> str:
        nonlocal asked
        asked += 1
        return fresh[min(asked - 1, 1)]

    ann = await clients(server.url, token=next_token)
    zed = await clients(server.url, token=token("zed", expiry))
    await ann.join("lobby")
    warning, _ = await next_event(ann, ServerMessage)
    assert warning.type == "error" and warning.frame["code"] == 4001
    closed, before = await next_event(zed, Disconnected, units=15)
    assert [e.frame["code"] for e in before if isinstance(e, ServerMessage)] == [4001]
    assert (closed.code, closed.will_reconnect) == (4001, False)
    assert state(zed) is ClientState.CLOSED
    assert asked == 2 and state(ann) is ClientState.OPEN
    await ann.publish("lobby", "still here")
    assert await server.metric("roomcast_token_expiries_total") == 1
    await ann.refresh_token()  # also on demand
    assert asked == 3
    with pytest.raises(ClientError, match="token function"):
        await zed.refresh_token()


async def test_a_cut_client_gets_every_message_once_in_order(
    serve: Callable[..., Awaitable[Served]], clients: Callable[..., Awaitable[Client]]
) -> None:
    """A connection reset without a close frame (the network dropped it) is a 1006.  While
    the client is away and while it comes back, another member keeps publishing; the client
    rejoins from the last position it saw (its own publish included), the server replays what
    it missed, and the client ends with every message exactly once, in order."""
    server = await serve("--history-size", "5000")
    assert server.port is not None
    async with Cutter(server.port) as cutter:
        ann = await clients(cutter.url, user_id="ann")
        bob = await clients(server.url, user_id="bob")
        await ann.join("lobby")
        await bob.join("lobby")
        published = 0
        stop = asyncio.Event()

        async def publish() -> None:
            nonlocal published
            while not stop.is_set():
                await bob.publish("lobby", published)
                published += 1
                await asyncio.sleep(seconds(0.002))  # the pace: about 500 messages a second

        publisher = asyncio.create_task(publish())
        received: list[Any] = []
        while len(received) < 10:
            message, _ = await next_event(ann, Message)
            received.append(message.data)
        mine = await ann.publish("lobby", "ann's own")  # bob gets it; ann's position moves
        assert mine is not None and ann.position("lobby") == mine

        cutter.refusing = True
        cutter.cut()
        lost, before = await next_event(ann, Disconnected)
        assert (lost.code, lost.will_reconnect) == (1006, True)
        received += [event.data for event in before if isinstance(event, Message)]
        away = published
        await eventually(lambda: published >= away + 20, what="20 messages while away")
        cutter.refusing = False
        rejoined, replayed = await next_event(ann, Rejoined, units=20)
        received += [event.data for event in replayed if isinstance(event, Message)]
        assert rejoined.recovered and rejoined.replayed == len(replayed) >= 20
        back = published
        await eventually(lambda: published >= back + 20, what="20 messages once back")
        stop.set()
        async with asyncio.timeout(seconds(10)):
            await publisher
        while len(received) < published:
            message, _ = await next_event(ann, Message)
            received.append(message.data)
        assert received == list(range(published))
        await nothing_more(ann)
        assert ann.duplicates == 0
        assert ann.position("lobby") == bob.position("lobby")


async def test_a_client_of_a_killed_server_recovers_from_redis(
    serve: Callable[..., Awaitable[Served]],
    clients: Callable[..., Awaitable[Client]],
    shared_redis: RedisServer,
    prefix: str,
) -> None:
    """With --redis-url a room's history lives in Redis: a client whose server was killed
    comes back to it (restarted on the same port) and gets what another instance published
    meanwhile, once each, in order."""
    flags = ("--redis-url", shared_redis.url, "--channel-prefix", prefix)
    one, two = await serve(*flags), await serve(*flags)
    ann = await clients(one.url, user_id="ann")
    bob = await clients(two.url, user_id="bob")
    await ann.join("lobby")
    await bob.join("lobby")
    await bob.publish("lobby", 0)
    first, _ = await next_event(ann, Message)
    assert first.data == 0

    await one.kill()
    await next_event(ann, Disconnected)
    last = None
    for n in range(1, 11):
        last = await bob.publish("lobby", n)
    await one.start()
    _, before = await next_event(ann, Reconnected, units=20)
    *replayed, rejoined = before
    assert [event.data for event in replayed if isinstance(event, Message)] == list(range(1, 11))
    assert rejoined == Rejoined("lobby", True, 10, last)
    await bob.publish("lobby", 11)
    message, _ = await next_event(ann, Message)
    assert message.data == 11 and ann.duplicates == 0


async def test_history_reads_and_a_join_from_a_saved_position(
    serve: Callable[..., Awaitable[Served]], clients: Callable[..., Awaitable[Client]]
) -> None:
    """history() reads the latest messages, or those after a position, without joining; a
    new client given a saved position as join(since=...) gets what followed it first."""
    server = await serve()
    ann = await clients(server.url, user_id="ann")
    await ann.join("lobby")
    positions = [await ann.publish("lobby", n) for n in range(5)]
    assert all(p is not None for p in positions)

    latest = await ann.history("lobby", limit=2)
    assert [m.data for m in latest.messages] == [3, 4]
    assert latest.position == positions[-1] and latest.recovered
    after = await ann.history("lobby", since=positions[1])
    assert [m.data for m in after.messages] == [2, 3, 4]
    assert [m.position for m in after.messages] == positions[2:]
    gone = await ann.history("lobby", since=Position("another", 3))
    assert (gone.recovered, gone.messages) == (False, ())

    cy = await clients(server.url, user_id="cy")
    joined = await cy.join("lobby", since=positions[2])
    assert (joined.recovered, joined.replayed, joined.position) == (True, 2, positions[-1])
    replayed = [await cy.recv(), await cy.recv()]  # (already there when join returned)
    assert [m.data for m in replayed if isinstance(m, Message)] == [3, 4]
    await nothing_more(cy)
    with pytest.raises(RequestRefused):
        await ann.history("$stats")
