"""The API port's limits, against a real ``serve_api`` listener on a loopback port.

Every client here is a real socket.  Timeouts are short and scaled by the test time unit; each
test waits on a condition or on the server's answer, bounded, never on a fixed sleep (the only
sleeps pace a client that is slow on purpose).  On leaving, every test checks that the server
closed every socket (``open_connections`` back to 0) and that no connection kept a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from roomcast.serve import http_api
from roomcast.serve.http_api import MAX_BODY, ApiRequest, ApiResponse, ApiStats, serve_api
from tests.support import eventually, seconds

BIG_ANSWER = 8 * 1024 * 1024


def _handler(request: ApiRequest) -> ApiResponse:
    """Echo the request, a large answer for ``/big``, a failure for ``/boom``."""
    if request.path == "/boom":
        raise RuntimeError("handler bug")
    if request.path == "/big":
        return ApiResponse(200, b"x" * BIG_ANSWER, "application/octet-stream")
    return ApiResponse.json(200, {"path": request.path, "body": request.body.decode()})


@dataclasses.dataclass
class _Api:
    port: int
    stats: ApiStats
    connections: list[Any]


@contextlib.asynccontextmanager
async def _serving(monkeypatch: pytest.MonkeyPatch, **options: Any) -> AsyncIterator[_Api]:
    """A listener with ``options``; on a clean exit, checks that all closed without a timer."""
    connections: list[Any] = []

    class _Recorded(http_api._HttpConnection):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            connections.append(self)
            super().connection_made(transport)

    monkeypatch.setattr(http_api, "_HttpConnection", _Recorded)
    stats = ApiStats()
    server = await serve_api(_handler, "127.0.0.1", 0, stats=stats, **options)
    try:
        yield _Api(server.sockets[0].getsockname()[1], stats, connections)
        await eventually(lambda: stats.open_connections == 0, 5, "all API sockets closed")
        assert connections, "no connection reached the server"
        assert not [c for c in connections if c.timer_pending], "a timer outlived its socket"
    finally:
        server.close()


async def _connect(
    port: int, rcvbuf: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


@dataclasses.dataclass
class _Answer:
    status: int
    head: str
    body: bytes
    elapsed: float


async def _answer(reader: asyncio.StreamReader, within: float, since: float) -> _Answer:
    """Everything the server sends until it closes its side, read within ``within`` seconds."""
    async with asyncio.timeout(within):
        raw = await reader.read()
    elapsed = time.monotonic() - since
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head, "the server closed without answering"
    return _Answer(int(head.split()[1]), head.decode("latin-1"), body, elapsed)


async def _trickle(writer: asyncio.StreamWriter, data: bytes, every: float) -> None:
    """Send ``data`` one byte every ``every`` seconds, as a slowloris client does."""
    with contextlib.suppress(ConnectionError):
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(every)


async def test_a_normal_request_is_answered_and_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A complete request gets its answer and the server closes the connection."""
    async with _serving(monkeypatch, header_timeout=seconds(1), body_timeout=seconds(1)) as api:
        reader, writer = await _connect(api.port)
        start = time.monotonic()
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        answer = await _answer(reader, seconds(2), start)
        assert answer.status == 200
        assert answer.body == b'{"path": "/echo", "body": "hello"}\n'
        assert "Connection: close" in answer.head
        writer.close()
    assert api.stats == ApiStats(open_connections=0, timeouts=0, refused_connections=0)


async def test_an_idle_connection_gets_408_after_the_header_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that sends nothing is answered 408 and closed at the header deadline."""
    # 0: connect, send nothing; 0.5: 408 and half-close; the client closes.
    timeout = seconds(0.5)
    async with _serving(monkeypatch, header_timeout=timeout) as api:
        start = time.monotonic()
        reader, writer = await _connect(api.port)
        answer = await _answer(reader, timeout + seconds(1), start)
        assert answer.status == 408
        assert b"error" in answer.body
        assert timeout * 0.9 <= answer.elapsed
        writer.close()
    assert api.stats.timeouts == 1


async def test_a_slowloris_head_is_cut_off_at_the_header_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One header byte every 0.2 units does not push the header deadline (1 unit) back."""
    # 0, 0.2, 0.4, ...: one byte each; 1: 408 although bytes keep coming.
    timeout = seconds(1)
    async with _serving(monkeypatch, header_timeout=timeout) as api:
        start = time.monotonic()
        reader, writer = await _connect(api.port)
        head = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100
        sender = asyncio.create_task(_trickle(writer, head, seconds(0.2)))
        try:
            answer = await _answer(reader, timeout + seconds(1), start)
        finally:
            sender.cancel()
        assert answer.status == 408
        assert timeout * 0.9 <= answer.elapsed <= timeout + seconds(0.5)
        writer.close()
    assert api.stats.timeouts == 1


async def test_a_declared_body_over_max_body_is_refused_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Content-Length: 2000000000 gets 413 as soon as the head is in, before any body."""
    async with _serving(monkeypatch, header_timeout=seconds(5), body_timeout=seconds(5)) as api:
        start = time.monotonic()
        reader, writer = await _connect(api.port)
        writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000000\r\n\r\n")
        answer = await _answer(reader, seconds(1), start)
        assert answer.status == 413
        assert str(MAX_BODY).encode() in answer.body
        writer.close()
    assert api.stats.timeouts == 0


@pytest.mark.parametrize("pace", [None, 0.1], ids=["stalled", "trickled"])
async def test_a_slow_body_is_cut_off_at_the_body_deadline(
    monkeypatch: pytest.MonkeyPatch, pace: float | None
) -> None:
    """A body that stalls, or trickles in, gets 408 at the body deadline (0.5 units)."""
    # 0: the head and 3 of 100 body bytes (then nothing, or one byte every 0.1); 0.5: 408.
    timeout = seconds(0.5)
    async with _serving(monkeypatch, header_timeout=seconds(5), body_timeout=timeout) as api:
        reader, writer = await _connect(api.port)
        start = time.monotonic()
        writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        sender = None
        if pace is not None:
            sender = asyncio.create_task(_trickle(writer, b"d" * 97, seconds(pace)))
        try:
            answer = await _answer(reader, timeout + seconds(1), start)
        finally:
            if sender is not None:
                sender.cancel()
        assert answer.status == 408
        assert timeout * 0.9 <= answer.elapsed <= timeout + seconds(0.5)
        writer.close()
    assert api.stats.timeouts == 1


async def test_at_the_cap_a_new_request_takes_the_place_of_the_oldest_idle_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With 3 idle connections open (the cap), a 4th that sends its request is served: the
    oldest idle one is dropped (503) to make room, so idle clients cannot lock callers out."""
    async with _serving(monkeypatch, header_timeout=seconds(5), max_connections=3) as api:
        idle = [await _connect(api.port) for _ in range(3)]
        await eventually(lambda: api.stats.open_connections == 3, 2, "3 idle connections")
        start = time.monotonic()
        reader, writer = await _connect(api.port)
        writer.write(b"GET /served HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await _answer(reader, seconds(1), start)).status == 200
        writer.close()
        oldest_reader, _ = idle[0]
        assert (await _answer(oldest_reader, seconds(1), start)).status == 503
        assert api.stats.evicted_connections == 1 and api.stats.refused_connections == 0
        for _, idle_writer in idle:
            idle_writer.close()


async def test_at_the_cap_with_every_request_in_progress_a_newcomer_gets_503(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Connections sending a body are not dropped for another: with 3 of them open, a 4th
    gets 503 at once and its socket is given back; after they time out, requests succeed."""
    timeout = seconds(1)
    async with _serving(
        monkeypatch, header_timeout=seconds(5), body_timeout=timeout, max_connections=3
    ) as api:
        busy = [await _connect(api.port) for _ in range(3)]
        for _, busy_writer in busy:
            busy_writer.write(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nabc")
        await eventually(lambda: api.stats.open_connections == 3, 2, "3 bodies in progress")
        start = time.monotonic()
        reader, writer = await _connect(api.port)
        refused = await _answer(reader, seconds(0.5), start)
        assert refused.status == 503 and "Connection: close" in refused.head
        assert api.stats.refused_connections == 1 and api.stats.evicted_connections == 0
        await eventually(lambda: api.stats.open_connections == 3, 1, "refused socket closed")
        writer.close()
        for busy_reader, busy_writer in busy:
            assert (await _answer(busy_reader, timeout + seconds(1), start)).status == 408
            busy_writer.close()
        await eventually(lambda: api.stats.open_connections == 0, 3, "slow ones closed")
        reader, writer = await _connect(api.port)
        writer.write(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await _answer(reader, seconds(1), time.monotonic())).status == 200
        writer.close()
    assert api.stats.timeouts == 3


async def test_the_linger_after_an_early_answer_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a 408, a client that never closes its end loses the connection after the linger."""
    # 0: connect; 0.3: 408 and half-close, the client sends more and keeps its end open;
    # 0.6: the server aborts.
    async with _serving(monkeypatch, header_timeout=seconds(0.3), linger=seconds(0.3)) as api:
        reader, writer = await _connect(api.port)
        assert (await _answer(reader, seconds(1.5), time.monotonic())).status == 408
        writer.write(b"GET /late HTTP/1.1\r\n\r\n")  # read and dropped, no second answer
        await eventually(lambda: api.stats.open_connections == 0, 1, "server closed its socket")
        writer.close()


async def test_an_answer_nobody_reads_is_dropped_after_the_linger(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that requests a large answer and never reads it holds no socket past the
    linger."""
    # 0: GET /big from a client with a tiny receive buffer, never read; 0.3: the server aborts.
    async with _serving(monkeypatch, linger=seconds(0.3)) as api:
        _reader, writer = await _connect(api.port, rcvbuf=4096)
        writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        await eventually(lambda: api.stats.open_connections == 0, 1.5, "server dropped it")
        writer.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(66)) + b"\r\n", 431),
        (b"GET /" + b"u" * 17000 + b" HTTP/1.1\r\n\r\n", 431),
        (b"POST /x HTTP/1.1\r\nContent-Length: 2000000000\r\n\r\nbody bytes", 413),
        (
            b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + f"{MAX_BODY + 1:x}\r\n".encode()
            + b"y" * (MAX_BODY + 1),
            413,
        ),
    ],
    ids=["malformed", "headers", "head", "declared-with-body", "chunked"],
)
async def test_early_answers_still_reach_the_client(
    monkeypatch: pytest.MonkeyPatch, request_bytes: bytes, status: int
) -> None:
    """A request refused before its end still gets its answer, then the socket closes (the
    parser's later callbacks for the same bytes change nothing)."""
    async with _serving(monkeypatch, linger=seconds(0.5)) as api:
        reader, writer = await _connect(api.port)
        writer.write(request_bytes)
        assert (await _answer(reader, seconds(2), time.monotonic())).status == status
        writer.close()
    assert api.stats.timeouts == 0


async def test_a_failing_handler_gets_500(monkeypatch: pytest.MonkeyPatch) -> None:
    """A handler that raises is answered 500 and logged; the connection still closes."""
    async with _serving(monkeypatch) as api:
        reader, writer = await _connect(api.port)
        writer.write(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await _answer(reader, seconds(2), time.monotonic())).status == 500
        writer.close()


async def test_the_positional_call_serves_with_the_default_limits() -> None:
    """``serve_api(handler, host, port, reuse_port)``, as callers wrote it, still serves."""
    server = await serve_api(_handler, "127.0.0.1", 0, True)
    try:
        reader, writer = await _connect(server.sockets[0].getsockname()[1])
        writer.write(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await _answer(reader, seconds(2), time.monotonic())).status == 200
        writer.close()
    finally:
        server.close()


@pytest.mark.parametrize(
    "limit",
    [{"header_timeout": 0}, {"body_timeout": -1}, {"linger": 0}, {"max_connections": 0}],
)
async def test_limits_must_be_positive(limit: dict[str, float]) -> None:
    """A limit of zero or less is a configuration error, reported before listening."""
    with pytest.raises(ValueError, match="positive"):
        await serve_api(_handler, "127.0.0.1", 0, **limit)  # type: ignore[arg-type]


async def test_at_the_cap_a_lingering_connection_goes_before_one_waiting_for_its_head(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Of the connections that hold no request in progress, one that only lingers after its
    answer is dropped first (its linger timer with it); one still waiting for its head stays."""
    async with _serving(
        monkeypatch, header_timeout=seconds(5), linger=seconds(5), max_connections=2
    ) as api:
        waiting_reader, waiting_writer = await _connect(api.port)
        lingering_reader, lingering_writer = await _connect(api.port)
        lingering_writer.write(b"NOT HTTP\r\n\r\n")
        assert (await _answer(lingering_reader, seconds(1), time.monotonic())).status == 400
        await eventually(lambda: api.stats.open_connections == 2, 2, "both still open")
        reader, writer = await _connect(api.port)
        writer.write(b"GET /third HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await _answer(reader, seconds(1), time.monotonic())).status == 200
        writer.close()
        assert api.stats.evicted_connections == 1
        waiting_writer.write(b"GET /still-here HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await _answer(waiting_reader, seconds(1), time.monotonic())).status == 200
        for stream in (waiting_writer, lingering_writer):
            stream.close()
