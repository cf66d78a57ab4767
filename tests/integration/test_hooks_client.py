"""HookClient against a real HTTP backend (aiohttp.web on a loopback port).

The backend's behaviour is set per test: answer, sleep, fail, send garbage.  Timeouts are in
the scaled time unit (``ROOMCAST_TEST_TIME_UNIT``); each call is checked to end within its
timeout and a small margin, so that "nobody hangs" is measured, not assumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from roomcast.events.signing import HEADER, verify
from roomcast.hooks import HookClient
from roomcast.hooks.decisions import (
    Allowed,
    ConnectAllowed,
    Denied,
    Failure,
    Hook,
    Policy,
)
from roomcast.rules import Action, Rules
from roomcast.testing import free_port
from tests.support import seconds

Answer = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]
GONE = web.AppKey("gone", asyncio.Event)
"""Set when the test ends: slow answers stop waiting."""
MARGIN = seconds(0.25)
"""What a call may take beyond its timeout (scheduling, the policy's decision)."""


class Backend:
    """A hook receiver that counts what it sees: requests, TCP connections, calls at once."""

    def __init__(self) -> None:
        self.answer: Answer = reply({"allow": True, "user": "u"})
        self.requests: list[tuple[web.Request, bytes]] = []
        self.peers: set[object] = set()
        self.in_flight = 0
        self.peak = 0
        self.url = ""
        self.received = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        self.peers.add(transport.get_extra_info("peername"))
        raw = await request.read()
        self.requests.append((request, raw))
        self.received.set()
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await self.answer(request, json.loads(raw))
        finally:
            self.in_flight -= 1


def reply(body: object, status: int = 200, delay: float = 0.0) -> Answer:
    """An answer of ``body`` as JSON after ``delay`` seconds."""

    async def answer(request: web.Request, asked: dict[str, Any]) -> web.StreamResponse:
        if delay:
            # (cut short when the test ends, so that the backend's shutdown is quick)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await request.app[GONE].wait()
        return web.json_response(body, status=status)

    return answer


def raw(payload: bytes, status: int = 200) -> Answer:
    async def answer(request: web.Request, asked: dict[str, Any]) -> web.StreamResponse:
        return web.Response(body=payload, status=status, content_type="application/json")

    return answer


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    receiver = Backend()
    app = web.Application()
    app[GONE] = asyncio.Event()
    app.router.add_post("/{hook}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    receiver.url = f"http://{host}:{port}"
    try:
        yield receiver
    finally:
        app[GONE].set()
        async with asyncio.timeout(seconds(5)):
            await runner.cleanup()


def client_for(backend: Backend, **options: Any) -> HookClient:
    return HookClient(
        connect_url=f"{backend.url}/connect",
        join_url=f"{backend.url}/join",
        publish_url=f"{backend.url}/publish",
        **options,
    )


async def started(client: HookClient) -> HookClient:
    await client.start()
    return client


@pytest.fixture
async def hooks(backend: Backend) -> AsyncIterator[HookClient]:
    client = await started(client_for(backend, timeout=seconds(1)))
    try:
        yield client
    finally:
        await client.stop()


async def timed(call: Awaitable[Any], limit: float) -> tuple[Any, float]:
    """The call's result and how long it took, failing the test past ``limit``."""
    loop = asyncio.get_running_loop()
    begun = loop.time()
    async with asyncio.timeout(limit):
        result = await call
    return result, loop.time() - begun


# -- answers ------------------------------------------------------------------------------


async def test_connect_allowed_with_grants_usable_by_rules(
    backend: Backend, hooks: HookClient
) -> None:
    """The connect hook's user, grants, data and expiry reach the caller; rules apply them."""
    backend.answer = reply(
        {
            "allow": True,
            "user": "alice",
            "rooms": {"chat:*": ["join"]},
            "data": {"plan": "pro"},
            "expires_at": 1765000000,
        }
    )
    headers = [("Cookie", "sid=1"), ("X-Secret", "no"), ("User-Agent", "t")]
    async with asyncio.timeout(seconds(2)):
        decision = await hooks.connect(headers, "room=lobby", "/ws/lobby", "127.0.0.9")
    assert isinstance(decision, ConnectAllowed)
    assert (decision.user, decision.data, decision.expires_at) == ("alice", {"plan": "pro"}, 1765e6)
    rules = Rules()
    assert rules.check(decision.who(), "chat:lobby", Action.JOIN) is None
    assert rules.check(decision.who(), "chat:lobby", Action.PUBLISH) is not None
    request, body = backend.requests[-1]
    assert request.path == "/connect"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(body) == {
        "hook": "connect",
        "headers": {"cookie": "sid=1", "user-agent": "t"},
        "query": {"room": "lobby"},
        "path": "/ws/lobby",
        "remote": "127.0.0.9",
    }
    assert hooks.stats(Hook.CONNECT).allowed == 1


async def test_connect_denied(backend: Backend, hooks: HookClient) -> None:
    """The backend's refusal, with its reason and status, is the decision."""
    backend.answer = reply({"allow": False, "reason": "log in first", "status": 401})
    async with asyncio.timeout(seconds(2)):
        decision = await hooks.connect([], "", "/ws", None)
    assert decision == Denied("log in first", 401)
    assert hooks.stats(Hook.CONNECT).denied == 1


@pytest.mark.parametrize("hook", [Hook.JOIN, Hook.PUBLISH])
async def test_join_and_publish_answers(backend: Backend, hooks: HookClient, hook: Hook) -> None:
    """Allow, deny with a reason, allow with data; the request names user, room and data."""
    call = hooks.join if hook is Hook.JOIN else hooks.publish
    cases: list[tuple[object, object]] = [
        ({"allow": True}, Allowed()),
        ({"allow": False, "reason": "muted"}, Denied("muted")),
        ({"allow": True, "data": {"text": "***"}}, Allowed({"text": "***"}, has_data=True)),
    ]
    for answer, expected in cases:
        backend.answer = reply(answer)
        async with asyncio.timeout(seconds(2)):
            assert await call("alice", "c1", "chat:lobby", {"text": "hi"}) == expected
    request, body = backend.requests[-1]
    assert request.path == f"/{hook.value}"
    assert json.loads(body) == {
        "hook": hook.value,
        "user": "alice",
        "connection": "c1",
        "room": "chat:lobby",
        "data": {"text": "hi"},
    }
    stats = hooks.stats(hook)
    assert (stats.allowed, stats.denied, stats.calls) == (2, 1, 3)
    assert sum(stats.latency_counts) == 3


async def test_roomcast_authenticates_itself(backend: Backend) -> None:
    """Static headers and an HMAC signature of the body come with every request."""
    secret = b"hook-secret-of-enough-bytes-0123"
    client = await started(
        client_for(
            backend,
            headers={"Authorization": "Bearer roomcast"},
            secrets=[secret, b"old"],
            timeout=seconds(1),
        )
    )
    try:
        async with asyncio.timeout(seconds(2)):
            await client.join("u", "c", "r")
    finally:
        await client.stop()
    request, body = backend.requests[-1]
    assert request.headers["Authorization"] == "Bearer roomcast"
    verify(secret, body, request.headers[HEADER])


# -- failures: the stated policy applies, nobody hangs ----------------------------------------


async def test_timeout_denies_by_default_within_the_timeout(backend: Backend) -> None:
    """A backend slower than the timeout: denied (503) once the timeout is up, not later."""
    timeout = seconds(0.3)
    backend.answer = reply({"allow": True, "user": "u"}, delay=seconds(3))
    client = await started(client_for(backend, timeout=timeout))
    try:
        decision, took = await timed(client.connect([], "", "/ws", None), timeout + MARGIN)
        assert isinstance(decision, Denied)
        assert (decision.status, decision.failure) == (503, Failure.TIMEOUT)
        assert took >= timeout * 0.9
        assert client.stats(Hook.CONNECT).failures[Failure.TIMEOUT] == 1
    finally:
        await client.stop()


async def test_timeout_allows_under_the_allow_policy(backend: Backend) -> None:
    """policy=allow per hook: the slow join goes ahead; the connect still fails closed."""
    timeout = seconds(0.3)
    backend.answer = reply({"allow": False}, delay=seconds(3))
    client = await started(client_for(backend, timeout=timeout, policy={"join": "allow"}))
    try:
        decision, took = await timed(client.join("u", "c", "r"), timeout + MARGIN)
        assert decision == Allowed(failure=Failure.TIMEOUT)
        assert took >= timeout * 0.9
        decision, _ = await timed(client.connect([], "", "/", None), timeout + MARGIN)
        assert isinstance(decision, Denied) and decision.failure is Failure.TIMEOUT
    finally:
        await client.stop()


async def test_allow_policy_connects_anonymously(backend: Backend) -> None:
    """A failed connect hook under policy=allow admits an anonymous client."""
    backend.answer = reply({}, status=500)
    client = await started(client_for(backend, timeout=seconds(1), policy="allow"))
    try:
        async with asyncio.timeout(seconds(2)):
            decision = await client.connect([], "", "/ws", None)
    finally:
        await client.stop()
    assert decision == ConnectAllowed(None, failure=Failure.STATUS)


@pytest.mark.parametrize("status", [500, 404, 302, 204])
async def test_non_2xx_and_empty_answers_apply_the_policy(
    backend: Backend, hooks: HookClient, status: int
) -> None:
    """An error status (a redirect included: not followed) or an empty 204 is a failure."""
    backend.answer = reply({"allow": True}, status=status)
    if status == 302:
        backend.answer = raw(b'{"allow": true}', status=302)
    async with asyncio.timeout(seconds(2)):
        decision = await hooks.publish("u", "c", "r", 1)
    expected = Failure.INVALID if status == 204 else Failure.STATUS
    assert isinstance(decision, Denied) and decision.failure is expected
    assert hooks.stats(Hook.PUBLISH).failures[expected] == 1


@pytest.mark.parametrize(
    "payload",
    [
        b"<html>oops</html>",
        b'{"allow": "yes"}',
        b'{"allow": true, "user": 7}',
        b'{"allow": true, "user": "u", "rooms": {"a": ["fly"]}}',
        b'{"allow": true, "user": "u", "data": NaN}',
    ],
)
async def test_garbage_applies_the_policy(
    backend: Backend, hooks: HookClient, payload: bytes
) -> None:
    """An answer that is not the documented JSON is a counted ``invalid`` failure."""
    backend.answer = raw(payload)
    async with asyncio.timeout(seconds(2)):
        decision = await hooks.connect([], "", "/ws", None)
    assert isinstance(decision, Denied) and decision.failure is Failure.INVALID
    assert hooks.stats(Hook.CONNECT).failures[Failure.INVALID] == 1


async def test_oversized_answers_are_invalid(backend: Backend, hooks: HookClient) -> None:
    """Answers over the limit are not read in full, with or without a Content-Length."""

    async def streamed(request: web.Request, asked: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(40):
            await response.write(b" " * 10_000)
        await response.write_eof()
        return response

    for answer in (raw(b" " * 300_000 + b'{"allow": true}'), streamed):
        backend.answer = answer
        async with asyncio.timeout(seconds(2)):
            decision = await hooks.join("u", "c", "r")
        assert isinstance(decision, Denied) and decision.failure is Failure.INVALID


async def test_backend_down_applies_the_policy_quickly() -> None:
    """Nothing listening: refused at once, not after the timeout."""
    url = f"http://127.0.0.1:{free_port()}/hook"
    client = await started(HookClient(join_url=url, timeout=seconds(5), policy="allow"))
    try:
        decision, took = await timed(client.join("u", "c", "r"), seconds(2))
    finally:
        await client.stop()
    assert decision == Allowed(failure=Failure.UNREACHABLE)
    assert took < seconds(1)


async def test_a_connection_cut_mid_answer_applies_the_policy(
    backend: Backend, hooks: HookClient
) -> None:
    """The backend closes the connection instead of answering: ``unreachable``."""

    async def hang_up(request: web.Request, asked: dict[str, Any]) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    backend.answer = hang_up
    async with asyncio.timeout(seconds(2)):
        decision = await hooks.publish("u", "c", "r", None)
    assert isinstance(decision, Denied) and decision.failure is Failure.UNREACHABLE


async def test_failures_are_logged_without_tracebacks(
    backend: Backend, hooks: HookClient, caplog: pytest.LogCaptureFixture
) -> None:
    """One line per failure, naming hook, address and cause; no traceback, no body."""
    backend.answer = raw(b'{"allow": true, "secret-body": 1}', status=500)
    with caplog.at_level(logging.WARNING, logger="roomcast.hooks"):
        async with asyncio.timeout(seconds(2)):
            await hooks.join("u", "c", "r")
    [record] = [r for r in caplog.records if r.name == "roomcast.hooks"]
    assert record.exc_info is None
    message = record.getMessage()
    assert "join hook at http://127.0.0.1:" in message and "HTTP 500" in message
    assert "secret-body" not in message


# -- concurrency and connections --------------------------------------------------------------


async def test_at_most_max_in_flight_reach_the_backend(backend: Backend) -> None:
    """3x max_in_flight slow calls at once: the backend never sees more than the cap; the
    rest wait for a slot and are answered, all within the timeout."""
    cap = 4
    backend.answer = reply({"allow": True}, delay=seconds(0.1))
    client = await started(client_for(backend, timeout=seconds(2), max_in_flight=cap))
    try:
        calls = [client.join("u", f"c{i}", "r") for i in range(3 * cap)]
        decisions, _ = await timed(asyncio.gather(*calls), seconds(2) + MARGIN)
        assert decisions == [Allowed()] * (3 * cap)
        assert backend.peak == cap
        assert client.stats(Hook.JOIN).peak_in_flight == cap
        assert len(backend.peers) <= cap
    finally:
        await client.stop()


async def test_calls_that_cannot_get_a_slot_in_time_are_saturated(backend: Backend) -> None:
    """Slots held as long as the timeout: calls beyond ``max_waiting`` fail at once as
    ``saturated``; the waiting ones fail when their timeout is up (``saturated``, or
    ``timeout`` for one that got a slot at the last moment); nobody waits past the timeout."""
    cap, timeout = 2, seconds(0.4)
    backend.answer = reply({"allow": True}, delay=seconds(3))
    client = await started(client_for(backend, timeout=timeout, max_in_flight=cap, max_waiting=2))
    try:
        loop = asyncio.get_running_loop()
        begun = loop.time()
        tasks = [asyncio.ensure_future(client.join("u", f"c{i}", "r")) for i in range(3 * cap)]
        # t=0: 2 calls at the backend, 2 waiting for a slot, 2 refused without waiting.
        done, _ = await asyncio.wait(tasks, timeout=seconds(0.1))
        assert set(done) == set(tasks[4:])
        for task in done:
            decision = task.result()
            assert isinstance(decision, Denied) and decision.failure is Failure.SATURATED
        stats = client.stats(Hook.JOIN)
        assert (stats.in_flight, stats.waiting) == (cap, 2)
        # t=timeout: the rest are decided, none later.
        async with asyncio.timeout(timeout + MARGIN):
            decisions = await asyncio.gather(*tasks)
        assert loop.time() - begun < timeout + MARGIN
        assert all(isinstance(d, Denied) for d in decisions)
        failures = [d.failure for d in decisions]
        assert failures[:2] == [Failure.TIMEOUT] * 2
        assert set(failures[2:4]) <= {Failure.SATURATED, Failure.TIMEOUT}
        assert stats.failures[Failure.SATURATED] + stats.failures[Failure.TIMEOUT] == 6
        assert stats.failures[Failure.SATURATED] >= 2
        # (the backend may see more: it goes on with requests roomcast gave up on)
        assert stats.peak_in_flight == cap
        assert (stats.in_flight, stats.waiting) == (0, 0)
    finally:
        await client.stop()


async def test_keep_alive_reuses_connections(backend: Backend, hooks: HookClient) -> None:
    """Sequential calls go over one kept-alive TCP connection, errors included."""
    async with asyncio.timeout(seconds(5)):
        for i in range(30):
            backend.answer = reply({"allow": True}, status=500 if i % 10 == 0 else 200)
            await hooks.join("u", "c", "r")
    assert len(backend.requests) == 30
    assert len(backend.peers) == 1


async def test_stop_ends_running_and_waiting_calls(backend: Backend) -> None:
    """Calls at the backend or waiting for a slot when the client stops are decided at once
    (``unreachable``), not left to their timeout."""
    backend.answer = reply({"allow": True}, delay=seconds(3))
    client = await started(client_for(backend, timeout=seconds(5), max_in_flight=1))
    tasks = [asyncio.ensure_future(client.join("u", f"c{i}", "r")) for i in range(2)]
    async with asyncio.timeout(seconds(2)):
        await backend.received.wait()
        await client.stop()
        decisions = await asyncio.gather(*tasks)
    assert [d.failure for d in decisions] == [Failure.UNREACHABLE] * 2


# -- configuration and lifecycle --------------------------------------------------------------


def test_configuration_errors() -> None:
    """Bad URLs, policies and limits are refused when the client is built."""
    with pytest.raises(ValueError, match="http"):
        HookClient(join_url="ftp://example.com/x")
    with pytest.raises(ValueError, match="'deny' or 'allow'"):
        HookClient(policy="maybe")
    with pytest.raises(ValueError, match="no hook named 'leave'"):
        HookClient(policy={"leave": Policy.ALLOW})
    with pytest.raises(ValueError, match="positive"):
        HookClient(timeout=0)
    with pytest.raises(ValueError, match="max_in_flight"):
        HookClient(max_in_flight=0)


async def test_unconfigured_hooks_and_unstarted_clients_are_misuse(backend: Backend) -> None:
    """A hook without a URL, or a call before start(), raises: a wiring bug, not a decision."""
    client = HookClient(join_url=f"{backend.url}/join")
    assert client.hooks == {Hook.JOIN}
    with pytest.raises(RuntimeError, match="start"):
        await client.join("u", "c", "r")
    await client.start()
    await client.start()  # twice is harmless
    try:
        with pytest.raises(RuntimeError, match="publish hook has no URL"):
            await client.publish("u", "c", "r", 1)
        calls = next(f for f in client.families() if f.name == "roomcast_hook_calls")
        assert {series.labels[0] for series in calls.series} == {"join"}
    finally:
        await client.stop()
        await client.stop()  # twice is harmless
