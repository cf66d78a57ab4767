"""Lifecycle-event drills: real ``roomcast serve`` processes (on the test's own Redis where
there is one), real WebSocket clients, the real webhook receiver (``tests/webhook_receiver``),
real faults: a process killed with SIGKILL, the receiver gone for 30 s.

What the backend ends up believing is checked against what is true: for every user, the
last of its ``connect``/``disconnect`` events (by ``seq``) says online iff a live connection
of the user exists; for every room, ``occupied``/``vacated`` alternate and the last says
occupied iff the room has members; for every membership, the last ``join``/``leave`` says
whether it holds.  Settings are short for a drill: debounce 1 s, instance TTL 3 s (the
``ROOMCAST_TEST_INSTANCE_TTL`` knob, not an option).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from roomcast.events.schema import Kind, LifecycleEvent, encode_events
from roomcast.events.signing import HEADER, signature_header
from roomcast.serve.lifecycle_events import INSTANCE_TTL_VARIABLE
from roomcast.testing import RedisServer
from tests.serve_process import metric, start_serve, stop_serve
from tests.support import connect, recv, seconds
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.slow

SECRET = "drill-secret"
TTL, DEBOUNCE = 3.0, 1.0
Served = tuple[subprocess.Popen[bytes], int, httpx.AsyncClient]


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    receiver = Receiver(SECRET.encode())
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


@contextlib.asynccontextmanager
async def serving(count: int, *flags: str) -> AsyncIterator[list[Served]]:
    env = {"ROOMCAST_WEBHOOK_SECRET": SECRET, INSTANCE_TTL_VARIABLE: str(TTL)}
    started: list[Served] = []
    try:
        for _ in range(count):
            started.append(
                await start_serve(
                    "--rate-limit", "0", "--history-size", "0", *flags, env=env, log_level="warning"
                )
            )
        yield started
    finally:
        for process, _, http in started:
            if process.poll() is None:
                await stop_serve(process, http)
            else:
                await http.aclose()


@dataclasses.dataclass
class Client:
    user: str
    server: int
    rooms: set[str]
    ws: ClientConnection | None = None


async def command(client: Client, **message: Any) -> None:
    assert client.ws is not None
    await client.ws.send(json.dumps({**message, "event_id": "e"}))
    while True:  # (other members' messages may come first)
        answer = json.loads(await recv(client.ws, timeout_units=20))
        if answer["type"] != "room_message":
            break
    assert answer["type"] == "ack", answer


def unique(events: list[LifecycleEvent]) -> list[LifecycleEvent]:
    """First arrivals by id: what a backend that deduplicates keeps."""
    return list({event.id: event for event in reversed(events)}.values())[::-1]


def mismatches(events: list[LifecycleEvent], live: list[Client], users: set[str]) -> list[str]:
    """Where the events' last word differs from reality (empty: consistent)."""
    wrong: list[str] = []
    kept = sorted(unique(events), key=lambda event: event.seq)
    online: dict[str, bool] = {}
    member: dict[tuple[str, str], bool] = {}
    occupied: dict[str, list[Kind]] = {}
    for event in kept:
        if event.kind in (Kind.CONNECT, Kind.DISCONNECT):
            assert event.user is not None
            online[event.user] = event.kind is Kind.CONNECT
        elif event.kind in (Kind.JOIN, Kind.LEAVE):
            assert event.user is not None and event.room is not None
            member[event.room, event.user] = event.kind is Kind.JOIN
        elif event.kind in (Kind.OCCUPIED, Kind.VACATED):
            assert event.room is not None
            occupied.setdefault(event.room, []).append(event.kind)
    truly_online = {client.user for client in live}
    for user in sorted(users):
        if online.get(user, False) != (user in truly_online):
            wrong.append(f"user {user}: events say {online.get(user)}")
    truly_member = {(room, client.user) for client in live for room in client.rooms}
    for pair in sorted(set(member) | truly_member):
        if member.get(pair, False) != (pair in truly_member):
            wrong.append(f"membership {pair}: events say {member.get(pair)}")
    truly_occupied = {room for client in live for room in client.rooms}
    for room in sorted(set(occupied) | truly_occupied):
        kinds = occupied.get(room, [])
        expected = [Kind.OCCUPIED, Kind.VACATED] * (len(kinds) // 2 + 1)
        if kinds != expected[: len(kinds)]:
            wrong.append(f"room {room}: occupied/vacated do not alternate: {kinds}")
        elif (bool(kinds) and kinds[-1] is Kind.OCCUPIED) != (room in truly_occupied):
            wrong.append(f"room {room}: events say {kinds[-1:]}")
    return wrong


async def settle(check: Callable[[], list[str]], within: float) -> list[str]:
    """Poll ``check`` until it finds nothing or ``within`` seconds passed; its last answer."""
    deadline = time.monotonic() + within
    while True:
        wrong = check()
        if not wrong or time.monotonic() > deadline:
            return wrong
        await asyncio.sleep(0.25)


async def test_1000_clients_over_3_processes_one_killed_end_consistent(
    own_redis: RedisServer,
) -> None:
    """1,000 clients over 3 processes connect and join; some leave rooms, some disconnect,
    then one process is killed with SIGKILL.  Within instance TTL + debounce + a few seconds
    the receiver's view (deduplicated, by seq) matches who is really online and where."""
    rng = random.Random(7)
    async with receiving() as receiver:
        flags = ["--redis-url", own_redis.url, "--webhook-url", receiver.url]
        flags += ["--events-debounce", str(DEBOUNCE), "--webhook-timeout", "2"]
        async with serving(3, *flags) as servers:
            clients = [
                Client(f"u{rng.randrange(700)}", rng.randrange(3), {f"r{rng.randrange(60)}"})
                for _ in range(1000)
            ]
            gate = asyncio.Semaphore(50)

            async def open_client(client: Client) -> None:
                (room,) = client.rooms
                port = servers[client.server][1]
                async with gate:
                    client.ws = await connect(
                        f"ws://127.0.0.1:{port}/ws/{room}?user_id={client.user}",
                        ping_interval=None,
                    )

            async def second_room(client: Client) -> None:
                room = f"r{rng.randrange(60)}"
                await command(client, type="join", room=room)
                client.rooms.add(room)

            async def leave_room(client: Client) -> None:
                room = sorted(client.rooms)[0]
                await command(client, type="leave", room=room)
                client.rooms.discard(room)

            await asyncio.gather(*(open_client(c) for c in clients))
            await asyncio.gather(*(second_room(c) for c in clients[:300]))
            await asyncio.gather(*(leave_room(c) for c in clients[200:350]))
            closed = clients[350:450]
            for client in closed:
                assert client.ws is not None
                await client.ws.close()
            await asyncio.sleep(0.5)  # (some departures wait for their window as the kill comes)
            victim = servers[0][0]
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            live = [c for c in clients if c not in closed and c.server != 0]
            users = {client.user for client in clients}
            started = time.monotonic()
            wrong = await settle(
                lambda: mismatches(receiver.events, live, users), TTL + DEBOUNCE + 8
            )
            took = time.monotonic() - started
            for client in clients:
                if client.ws is not None and client not in closed:
                    with contextlib.suppress(Exception):
                        await client.ws.close()
        assert wrong == [], f"{len(wrong)} mismatches after {took:.1f} s: {wrong[:10]}"
        assert receiver.rejected == []
        synthetic = [e for e in receiver.events if e.synthetic]
        assert synthetic and {e.kind for e in synthetic} <= {
            Kind.DISCONNECT,
            Kind.LEAVE,
            Kind.VACATED,
        }
        assert {e.reason for e in synthetic if e.kind is Kind.DISCONNECT} == {"instance lost"}
        print(f"consistent {took:.1f} s after the kill; {len(synthetic)} synthetic events")


async def test_the_receiver_down_for_30_s_loses_nothing() -> None:
    """While the receiver is away for 30 s, events wait in the outbox (the backlog rises,
    within its bound) and are retried; once it is back all arrive: every id of the store's
    count, none missing, and the backlog returns to 0."""
    async with receiving() as receiver:
        flags = ["--webhook-url", receiver.url, "--events-debounce", "0"]
        flags += ["--events-max", "20000", "--webhook-timeout", "2"]
        async with serving(1, *flags) as servers:
            _, port, http = servers[0]
            backlog: list[float] = []

            async def churn(n: int) -> None:
                """Connect, join two rooms, publish, leave: events while the receiver is away."""
                async with asyncio.timeout(seconds(20)):
                    ws = await connect(f"ws://127.0.0.1:{port}/ws/c{n % 7}?user_id=p{n}")
                    client = Client(f"p{n}", 0, {f"c{n % 7}"}, ws)
                    await command(client, type="join", room=f"d{n % 5}")
                    await command(client, type="publish", room=f"d{n % 5}", data=n)
                    await ws.close()

            await asyncio.gather(*(churn(n) for n in range(20)))
            await receiver.stop()
            began = time.monotonic()
            n = 20
            while time.monotonic() - began < 30:
                await asyncio.gather(*(churn(n + k) for k in range(20)))
                n += 20
                backlog.append(await metric(http, "roomcast_events_backlog"))
                await asyncio.sleep(1)
            failures = await failures_by_kind(http)
            assert failures["connection"] > 0
            await receiver.start()  # (the same port)
            emitted = int(await metric(http, "roomcast_lifecycle_events_total"))
            for _ in range(120):  # (the next retry comes within max_backoff, 30 s)
                if await metric(http, "roomcast_events_backlog") == 0:
                    break
                await asyncio.sleep(0.5)
            dropped = await metric(http, "roomcast_events_dropped_total")
        ids = receiver.unique_ids()
        instance = ids[0].rsplit("-", 1)[0]
        assert sorted(ids, key=lambda i: int(i.rsplit("-", 1)[1])) == [
            f"{instance}-{k}" for k in range(1, emitted + 1)
        ]
        assert dropped == 0 and receiver.rejected == []
        assert max(backlog) > 500 and max(backlog) <= 20000
        assert backlog == sorted(backlog)  # (rising all along: nothing delivered meanwhile)
        duplicates = len(receiver.events) - len(ids)
        print(f"{emitted} events, {duplicates} delivered twice, backlog peak {max(backlog):.0f}")


async def failures_by_kind(http: httpx.AsyncClient) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in (await http.get("/metrics")).text.splitlines():
        if line.startswith("roomcast_webhook_failures_total{"):
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            out[kind] = float(line.rsplit(" ", 1)[1])
    return out


async def test_deliveries_verify_and_a_forgery_does_not() -> None:
    """Every delivery of a real server verifies with the shared secret; a tampered body, a
    stale timestamp and another secret's signature are refused with 401."""
    async with receiving() as receiver:
        flags = ["--webhook-url", receiver.url, "--events-debounce", "0"]
        async with serving(1, *flags) as servers:
            _, port, _ = servers[0]
            ws = await connect(f"ws://127.0.0.1:{port}/ws/lobby?user_id=ann")
            await ws.close()
            await receiver.wait_until(
                lambda: any(e.kind is Kind.DISCONNECT for e in receiver.events), seconds(20)
            )
        assert receiver.rejected == [] and len(receiver.requests) >= 1
        genuine = receiver.requests[0]
        body = encode_events([receiver.events[0]])
        forged = [
            (genuine.body.replace(b"ann", b"bob"), genuine.headers[HEADER]),
            (body, signature_header([SECRET.encode()], body, timestamp=int(time.time()) - 3600)),
            (body, signature_header([b"not-the-secret"], body)),
        ]
        async with httpx.AsyncClient() as http:
            for forged_body, header in forged:
                answer = await http.post(
                    receiver.url, content=forged_body, headers={HEADER: header}
                )
                assert answer.status_code == 401
        assert len(receiver.rejected) == 3
