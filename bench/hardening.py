"""Hardening drills, round two: the defects an independent drill found in ``roomcast serve`` and
on the FastAPI path, measured again against any roomcast source tree.

    .venv/bin/python bench/hardening.py [--src PATH] [--only NAME[,NAME]] [--json FILE]
    .venv/bin/python bench/hardening.py --compare BEFORE.json AFTER.json

Every server runs as ``python -m roomcast.cli serve ...`` (the FastAPI drill: uvicorn serving
``bench/apps.py``'s ``roomcast_app``) with ``PYTHONPATH=<--src>``, so one script measures the
code before and after a change.  Flags that the tree's ``serve --help`` does not list are not
passed to it (the case says which were left out).  The drills (``--only`` takes their names):

frames       a text frame with FIN=0 then 40,000 / 100,000 empty continuation frames, and
             100,000 pings, from one client; a neighbour pings (JSON) every 50 ms
api          the API port: 1,100 idle connections, 500 slowloris ones (a header byte a second),
             one POST declaring a 2 GB body and sending none
descriptors  the server under RLIMIT_NOFILE 1,024 with --max-connections 18,000 and 900: a burst
             of 1,500 upgrades at once
fastapi      ConnectionManager on uvicorn: 20 clients that never read, flooded with broadcasts;
             their server sockets close_timeout + 10 s later (``ss``)
rooms        2,000 anonymous clients join 100 rooms each (names of 64 four-byte characters, and
             of 256, the old limit in characters); server RSS before, at the peak, after
presence     2,000 members of ``big``; one client re-joins ``$presence:big`` 100 times a second
             for 11.5 s (twice): bytes received, server CPU
exp          --jwt-secret, --token-grace 1, a token whose exp is a numeric string 2 s ahead
supervisor   --workers 2 --redis-url (a throwaway redis-server): kill -9 of the supervisor
logs         25 slow-consumer closes: WARNING lines; 1,060 publishes during a Redis outage: the
             sum in the log lines against roomcast_broker_publish_failures_total

Every connection is on 127.0.0.0/8 (clients from several 127.x source addresses), servers on
ports from ``--port-base`` (65481, outside the ephemeral range) up, every wait is bounded, and
every process started here is in a session of its own, ended with its whole group when its
drill ends (SIGTERM, then SIGKILL) and again, SIGKILL, when the script exits.  Server logs go to
``bench/results/hardening-*/``.  One table row per case on stdout, progress on stderr;
``--json`` keeps the figures, and ``--compare`` prints before/after tables from two such files.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import dataclasses
import datetime
import hashlib
import hmac
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, cast

import psutil
import uvloop

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
API_KEY = "hardening-drill-key"
JWT_SECRET = "hardening-drill-secret-0123456789abcdef"
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
PR_SET_PDEATHSIG = 1
ATTACKER, NEIGHBOUR, PROBE = "127.0.0.2", "127.0.0.3", "127.0.0.4"
CROWD = ("127.0.1.2", "127.0.1.3", "127.0.1.4", "127.0.1.5")
"""Source addresses of many-client drills (each has its own ephemeral ports)."""
CONTINUATION, TEXT, CLOSE, PING, PONG = 0x0, 0x1, 0x8, 0x9, 0xA
CAP = 30.0
"""Longest a flood measurement runs; a stall beyond it is reported as "> 30 s"."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def mb(size: float) -> str:
    return f"{size / 1e6:.1f} MB"


def counts(counter: Counter[str]) -> str:
    return ", ".join(f"{key}: {value:,}" for key, value in counter.most_common()) or "none"


# ------------------------------------------------------------------ the tree under test


@dataclasses.dataclass(frozen=True)
class Tree:
    """The roomcast sources a run measures: where, which commit, which flags it has."""

    src: Path
    commit: str
    local_changes: str
    imported_from: str
    serve_help: str

    @classmethod
    def load(cls, src: Path) -> Tree:
        env = {**os.environ, "PYTHONPATH": str(src)}

        def output(*command: str) -> str:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
            return done.stdout.strip()

        python = sys.executable
        imported = output(python, "-c", "import roomcast; print(roomcast.__file__)")
        if not imported.startswith(str(src)):
            raise SystemExit(f"PYTHONPATH={src} imports roomcast from {imported!r}, not from there")
        return cls(
            src=src,
            commit=output("git", "-C", str(src), "rev-parse", "HEAD") or "unknown",
            local_changes=output("git", "-C", str(src), "status", "--porcelain", "--", ".")
            or "none",
            imported_from=imported,
            serve_help=output(python, "-m", "roomcast.cli", "serve", "--help"),
        )

    def has(self, flag: str) -> bool:
        """Whether ``roomcast serve`` of this tree lists ``flag``."""
        return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", self.serve_help) is not None


# ------------------------------------------------------------------ processes


class Child:
    """A process of this run, in a session (and process group) of its own, output to a log;
    Linux sends it SIGKILL if this script dies without stopping it."""

    def __init__(
        self, name: str, argv: Sequence[str], env: dict[str, str], log_path: Path, nofile: int
    ) -> None:
        self.name = name
        self.log_path = log_path

        def prepare() -> None:  # in the child, before exec
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with log_path.open("ab") as out:
            self.process = subprocess.Popen(
                list(argv),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=prepare,
            )
        self.pid = self.process.pid
        self._ended = False

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal_group(self, signum: int) -> None:
        """``signum`` to every process of the group this child leads (its workers too)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to the group, SIGKILL to what is left after ``grace`` seconds."""
        if self.alive():
            self.signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(self.process.wait, grace)
        self.kill()

    def kill(self) -> None:
        """SIGKILL to the group, once: afterwards its id may belong to someone else."""
        if self._ended:
            return
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        self._ended = True


class Ports:
    """Ports from ``base`` up, each handed out once, skipping any that is taken."""

    def __init__(self, base: int) -> None:
        self._next = base

    def take(self) -> int:
        while self._next <= 65535:
            port, self._next = self._next, self._next + 1
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
        raise RuntimeError("no free port left above --port-base")


@dataclasses.dataclass
class Run:
    """One run of the drills against one tree."""

    tree: Tree
    ports: Ports
    log_dir: Path
    children: list[Child] = dataclasses.field(default_factory=list)

    def spawn(
        self, name: str, argv: Sequence[str], env: dict[str, str] | None = None, nofile: int = 0
    ) -> Child:
        full_env = {
            **os.environ,
            "PYTHONPATH": str(self.tree.src),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        child = Child(name, argv, full_env, self.log_dir / f"{name}.log", nofile)
        self.children.append(child)
        return child

    def kill_all(self) -> None:
        for child in self.children:
            child.kill()


class Serve:
    """``roomcast serve`` of the tree under test, with an API port (key ``API_KEY``).

    ``flags`` are (flag, value or None); flags this tree does not know are left out and listed
    in ``left_out``.
    """

    def __init__(
        self,
        run: Run,
        name: str,
        *flags: tuple[str, str | None],
        api: bool = True,
        nofile: int = 0,
    ) -> None:
        self.port = run.ports.take()
        self.api_port = run.ports.take() if api else None
        argv = [sys.executable, "-m", "roomcast.cli", "serve", "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--api-port", str(self.api_port or -1)]
        argv += ["--log-level", "warning"]
        self.left_out: list[str] = []
        for flag, value in flags:
            if not run.tree.has(flag):
                self.left_out.append(flag)
                continue
            argv += [flag] if value is None else [flag, value]
        self.child = run.spawn(name, argv, {"ROOMCAST_API_KEY": API_KEY}, nofile)
        self.pid = self.child.pid

    @property
    def control_port(self) -> int:
        """Where /readyz and /metrics are asked: the API port if there is one."""
        return self.api_port if self.api_port is not None else self.port

    async def ready(self, limit: float = 30.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if not self.child.alive():
                raise RuntimeError(f"{self.child.name} exited: {self.child.log()[-600:]}")
            with contextlib.suppress(OSError, TimeoutError, ValueError):
                status, _ = await http(self.control_port, "GET", "/readyz", limit=1.0)
                if status == 200:
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.child.name} not ready within {limit:.0f} s")

    async def metrics(self, limit: float = 3.0) -> dict[str, float]:
        return await metrics_of(self.control_port, limit)

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def cpu(self) -> float:
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def extra(self) -> dict[str, str]:
        """A figure naming the flags left out, if any."""
        if not self.left_out:
            return {}
        return {"flags left out (not in this version)": " ".join(self.left_out)}

    async def stop(self) -> None:
        await self.child.stop()


class RedisServer:
    """A throwaway redis-server on a port of this run (no persistence), restartable."""

    def __init__(self, run: Run, name: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("no redis-server on PATH")
        self._run, self._name, self._binary = run, name, binary
        self.port = run.ports.take()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.child: Child | None = None

    async def start(self) -> None:
        self.child = self._run.spawn(
            self._name,
            [
                *(self._binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
            ],
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
                async with asyncio.timeout(1):
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.write(b"PING\r\n")
                    answer = await reader.readline()
                    writer.close()
                    if answer.startswith(b"+PONG"):
                        return
            await asyncio.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING")

    def kill(self) -> None:
        if self.child is not None:
            self.child.kill()


# ------------------------------------------------------------------ HTTP


def status_of(head: bytes) -> int:
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise ValueError(f"not an HTTP answer: {head[:40]!r}")
    return int(parts[1])


async def http(
    port: int,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    headers: Sequence[str] = (),
    limit: float = 1.0,
    source: str = PROBE,
) -> tuple[int, bytes]:
    """One HTTP/1.1 request on its own connection, within ``limit`` seconds: (status,
    body)."""
    async with asyncio.timeout(limit):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        try:
            lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
            lines += [f"Content-Length: {len(body)}", *headers]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            head = await reader.readuntil(b"\r\n\r\n")
            match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if match is not None:
                content = await reader.readexactly(int(match.group(1)))
            else:
                content = await reader.read()
            return status_of(head), content
        finally:
            writer.close()


async def metrics_of(port: int, limit: float = 3.0) -> dict[str, float]:
    """``GET /metrics`` as {sample: value}."""
    status, body = await http(port, "GET", "/metrics", limit=limit)
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    samples: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                samples[name] = float(value)
    return samples


class HealthProbe:
    """GET /healthz every 0.5 s, 1 s timeout each, until stopped; counts failures by kind."""

    def __init__(self, port: int, source: str = PROBE) -> None:
        self.port, self.source = port, source
        self.ok = 0
        self.failures: Counter[str] = Counter()
        self.started = time.monotonic()
        self.last_failure = 0.0
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._probe())

    async def _probe(self) -> None:
        for _ in range(400):  # at most 200 s
            started = time.monotonic()
            try:
                status, _ = await http(self.port, "GET", "/healthz", source=self.source)
                failure = "" if status == 200 else str(status)
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
                failure = "no answer in 1 s" if isinstance(exc, TimeoutError) else "closed"
            if failure:
                self.failures[failure] += 1
                self.last_failure = started - self.started
            else:
                self.ok += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stop.wait(), max(0.0, 0.5 - (time.monotonic() - started))
                )
            if self._stop.is_set():
                return

    async def stop(self) -> str:
        """Stop probing; how many probes failed, how, and the last one's time."""
        self._stop.set()
        await self._task
        failed = self.failures.total()
        text = f"{failed} of {self.ok + failed} failed"
        if failed:
            text += f" ({counts(self.failures)}; the last at +{self.last_failure:.1f} s)"
        return text


async def healthy(port: int) -> str:
    """One GET /healthz (1 s timeout): "answered" or how it failed."""
    try:
        status, _ = await http(port, "GET", "/healthz")
    except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
        return f"failed ({type(exc).__name__})"
    return "answered 200" if status == 200 else f"answered {status}"


# ------------------------------------------------------------------ a raw WebSocket client


def client_frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """One masked client frame, built by hand so that it can be anything a hostile client
    sends."""
    key = os.urandom(4)
    size = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 1 << 16:
        head += bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + size.to_bytes(8, "big")
    if size:
        repeated = (key * (size // 4 + 1))[:size]
        masked = int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")
        payload = masked.to_bytes(size, "big")
    return head + key + payload


def text_frame(message: dict[str, Any]) -> bytes:
    return client_frame(TEXT, json.dumps(message, ensure_ascii=False).encode())


PING_FRAME = text_frame({"type": "ping"})


class Refused(Exception):
    """The upgrade was answered with another status than 101."""

    def __init__(self, status: int) -> None:
        super().__init__(f"upgrade answered {status}")
        self.status = status


class WsClient(asyncio.Protocol):
    """A WebSocket client over a plain socket: sends exactly the bytes it is given; counts what
    arrives, hands text frames to ``on_text``, answers pings and close frames.

    ``stall``: stop reading right after the handshake (a client that never reads again);
    ``parse=False``: only count the bytes.
    """

    def __init__(
        self,
        *,
        parse: bool = True,
        stall: bool = False,
        on_text: Callable[[bytes], None] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future[int] = loop.create_future()
        self.ended: asyncio.Future[None] = loop.create_future()
        """Done when a close frame arrived or the connection was lost."""
        self.ended_at = 0.0
        self.close_code: int | None = None
        self.received = 0
        self.transport: asyncio.Transport | None = None
        self._parse, self._stall, self._on_text = parse, stall, on_text
        self._buffer = bytearray()
        self._upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if not self._upgraded:
            self._buffer += data
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = bytes(self._buffer[:end]), bytes(self._buffer[end + 4 :])
            self._buffer.clear()
            status = status_of(head)
            self._upgraded = status == 101
            if not self.handshake.done():
                self.handshake.set_result(status)
            if not self._upgraded:
                return
            if self._stall and self.transport is not None:
                self.transport.pause_reading()
            if not data:
                return
        self.received += len(data)
        if self._parse:
            self._buffer += data
            self._frames()

    def _frames(self) -> None:
        buffer, position = self._buffer, 0
        while len(buffer) - position >= 2:
            first, second = buffer[position], buffer[position + 1]
            size, start = second & 0x7F, position + 2
            if size == 126:
                if len(buffer) < start + 2:
                    break
                size, start = int.from_bytes(buffer[start : start + 2], "big"), start + 2
            elif size == 127:
                if len(buffer) < start + 8:
                    break
                size, start = int.from_bytes(buffer[start : start + 8], "big"), start + 8
            if len(buffer) < start + size:
                break
            payload = bytes(buffer[start : start + size])
            position = start + size
            opcode = first & 0x0F
            if opcode == TEXT and self._on_text is not None:
                self._on_text(payload)
            elif opcode == PING:
                self.send(client_frame(PONG, payload))
            elif opcode == CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.send(client_frame(CLOSE, payload[:2]))
                self._end()
        del buffer[:position]

    def _end(self) -> None:
        if not self.ended.done():
            self.ended_at = time.monotonic()
            self.ended.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError("closed during the handshake"))
        self._end()

    def how_it_ended(self, since: float) -> str:
        if not self.ended.done():
            return "still open"
        code = f"closed {self.close_code}" if self.close_code else "closed without a close frame"
        return f"{code} after {self.ended_at - since:.2f} s"


def bound_socket(source: str, rcvbuf: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        if rcvbuf:  # before connect(), so that the advertised window stays small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((source, 0))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def upgrade_request(port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def ws_connect(
    port: int,
    path: str,
    *,
    source: str = "127.0.0.1",
    rcvbuf: int = 0,
    parse: bool = True,
    stall: bool = False,
    on_text: Callable[[bytes], None] | None = None,
    limit: float = 10.0,
) -> WsClient:
    """A client that completed the upgrade; ``Refused`` if the answer was not 101."""
    loop = asyncio.get_running_loop()
    sock = bound_socket(source, rcvbuf)
    client: WsClient | None = None
    try:
        async with asyncio.timeout(limit):
            await loop.sock_connect(sock, ("127.0.0.1", port))
            _, client = await loop.create_connection(
                lambda: WsClient(parse=parse, stall=stall, on_text=on_text), sock=sock
            )
            client.send(upgrade_request(port, path))
            status = await client.handshake
    except BaseException:
        if client is not None:
            client.abort()
        else:
            sock.close()
        raise
    if status != 101:
        client.abort()
        raise Refused(status)
    return client


async def connect_many(
    port: int, paths: Sequence[str], on_text: Callable[[bytes], None] | None = None
) -> list[WsClient]:
    """Clients for ``paths``, from the CROWD addresses, at most 200 handshakes in flight."""
    gate = asyncio.Semaphore(200)

    async def one(n: int, path: str) -> WsClient:
        async with gate:
            return await ws_connect(port, path, source=CROWD[n % len(CROWD)], on_text=on_text)

    return list(await asyncio.gather(*(one(n, path) for n, path in enumerate(paths))))


def abort_all(clients: Sequence[WsClient]) -> None:
    for client in clients:
        client.abort()


async def wait_for_metric(
    serve: Serve, name: str, done: Callable[[float], bool], limit: float
) -> float | None:
    """Poll ``name`` until ``done(value)``, ``limit`` seconds at most; the last value (None
    if never read)."""
    value: float | None = None
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, TimeoutError, RuntimeError, ValueError):
            value = (await serve.metrics()).get(name)
            if value is not None and done(value):
                return value
        await asyncio.sleep(0.2)
    return value


# ------------------------------------------------------------------ drill results


@dataclasses.dataclass
class Case:
    """One measured case of a drill: a label and its figures, in order."""

    label: str
    figures: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Drill:
    name: str
    title: str
    limit: float
    """Seconds the drill may take at most (it is cancelled, its processes stopped, after)."""
    run: Callable[[Run], Awaitable[list[Case]]]


# ------------------------------------------------------------------ 1. frame floods


class Pinger:
    """A neighbour that pings (JSON) every 50 ms and keeps its slowest answer."""

    def __init__(self) -> None:
        self.answered = asyncio.Event()
        self.worst = 0.0
        self.pongs = 0
        self.pending_since: float | None = None
        self._stop = asyncio.Event()

    def on_text(self, payload: bytes) -> None:
        if b'"type":"pong"' in payload or b'"type": "pong"' in payload:
            self.answered.set()

    async def run(self, client: WsClient) -> None:
        for _ in range(100_000):  # bounded by the drill's time limit anyway
            if self._stop.is_set():
                return
            self.answered.clear()
            self.pending_since = sent = time.monotonic()
            client.send(PING_FRAME)
            stopping = asyncio.ensure_future(self._stop.wait())
            answering = asyncio.ensure_future(self.answered.wait())
            await asyncio.wait({stopping, answering}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            answering.cancel()
            if not self.answered.is_set():
                return  # stopped while waiting: the wait stays pending
            self.worst = max(self.worst, time.monotonic() - sent)
            self.pongs += 1
            self.pending_since = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.05)

    def stop(self) -> None:
        self._stop.set()

    def worst_text(self) -> str:
        if self.pending_since is not None:
            waited = time.monotonic() - self.pending_since
            if waited >= self.worst and waited > 1.0:
                if waited >= CAP - 0.5:
                    return f"> {CAP:.0f} s (no answer by the cap)"
                return f"> {waited:.1f} s (still unanswered at the end)"
        return f"{self.worst:.3f} s"


async def flood_case(run: Run, label: str, frames: bytes) -> Case:
    serve = Serve(run, "frames")
    clients: list[WsClient] = []
    pinger = Pinger()
    health: HealthProbe | None = None
    try:
        await serve.ready()
        neighbour = await ws_connect(
            serve.port, "/ws?user_id=neighbour", source=NEIGHBOUR, on_text=pinger.on_text
        )
        attacker = await ws_connect(serve.port, "/ws?user_id=attacker", source=ATTACKER)
        clients += [neighbour, attacker]
        health = HealthProbe(serve.port)
        pinging = asyncio.create_task(pinger.run(neighbour))
        await asyncio.sleep(0.3)  # the neighbour is answered before the flood
        started = time.monotonic()
        attacker.send(frames)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(attacker.ended), CAP)
        # Watch the neighbour a little longer: the server must keep answering after the attack.
        end = max(time.monotonic() + 1.0, started + 3.0) if attacker.ended.done() else 0.0
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        pinger.stop()
        await pinging
        health_text = await health.stop()
        return Case(
            label,
            {
                "neighbour's worst pong": pinger.worst_text(),
                "neighbour's pongs": str(pinger.pongs),
                "attacker": attacker.how_it_ended(started)
                if attacker.ended.done()
                else f"still open after {CAP:.0f} s",
                "/healthz (WS port, 1 s timeout, every 0.5 s)": health_text,
                **serve.extra(),
            },
        )
    finally:
        pinger.stop()
        if health is not None:
            await health.stop()
        abort_all(clients)
        await serve.stop()


async def drill_frames(run: Run) -> list[Case]:
    def continuations(count: int) -> bytes:
        first = client_frame(TEXT, b'{"type":', fin=False)
        return first + client_frame(CONTINUATION, fin=False) * count

    cases = []
    for label, frames in (
        ("FIN=0 text + 40,000 empty continuations", continuations(40_000)),
        ("FIN=0 text + 100,000 empty continuations", continuations(100_000)),
        ("100,000 pings", client_frame(PING) * 100_000),
    ):
        log(f"frames: {label}")
        cases.append(await flood_case(run, label, frames))
    return cases


# ------------------------------------------------------------------ 2. the API port


@dataclasses.dataclass
class Tracked:
    """A raw TCP client whose end (and the first bytes it got) is recorded."""

    writer: asyncio.StreamWriter
    answer: bytes = b""
    closed_at: float | None = None
    watcher: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, port: int, source: str) -> Tracked:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 10
        )
        tracked = cls(writer)
        tracked.watcher = asyncio.create_task(tracked._watch(reader))
        return tracked

    async def _watch(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            for _ in range(10_000):
                chunk = await reader.read(4096)
                if not chunk:
                    break
                self.answer = (self.answer + chunk)[:200]
        self.closed_at = time.monotonic()

    def outcome(self) -> str:
        if self.closed_at is None:
            return "open"
        try:
            return f"{status_of(self.answer)} then closed"
        except ValueError:
            return "closed without an answer"

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
        self.writer.transport.abort()


async def open_many(port: int, count: int) -> tuple[list[Tracked], int]:
    gate = asyncio.Semaphore(200)

    async def one(n: int) -> Tracked | None:
        async with gate:
            try:
                return await Tracked.open(port, CROWD[n % len(CROWD)])
            except (OSError, TimeoutError):
                return None

    opened = await asyncio.gather(*(one(n) for n in range(count)))
    tracked = [t for t in opened if t is not None]
    return tracked, count - len(tracked)


async def api_idle(run: Run) -> Case:
    serve = Serve(run, "api-idle")
    tracked: list[Tracked] = []
    try:
        await serve.ready()
        assert serve.api_port is not None
        health = HealthProbe(serve.api_port)
        tracked, failed = await open_many(serve.api_port, 1100)
        await asyncio.sleep(12)
        outcomes = Counter(t.outcome() for t in tracked)
        return Case(
            "1,100 idle connections (no byte sent)",
            {
                "still open after 12 s": f"{outcomes['open']:,} of {len(tracked):,}",
                "the others": counts(Counter({k: v for k, v in outcomes.items() if k != "open"})),
                "connects failed": str(failed),
                "API /healthz, from the first connect on": await health.stop(),
            },
        )
    finally:
        for t in tracked:
            t.close()
        await serve.stop()


async def api_slowloris(run: Run) -> Case:
    serve = Serve(run, "api-slowloris")
    tracked: list[Tracked] = []
    tricklers: list[asyncio.Task[None]] = []
    request = (
        f"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {API_KEY}\r\n"
        'Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{"room"'
    ).encode()

    async def trickle(t: Tracked) -> None:
        with contextlib.suppress(OSError):
            for n in range(len(request)):
                if t.closed_at is not None:
                    return
                t.writer.write(request[n : n + 1])
                await asyncio.sleep(1.0)

    try:
        await serve.ready()
        assert serve.api_port is not None
        health = HealthProbe(serve.api_port)
        tracked, failed = await open_many(serve.api_port, 500)
        tricklers = [asyncio.create_task(trickle(t)) for t in tracked]
        await asyncio.sleep(15)
        outcomes = Counter(t.outcome() for t in tracked)
        return Case(
            "500 slowloris connections (one header byte a second)",
            {
                "still open after 15 s": f"{outcomes['open']:,} of {len(tracked):,}",
                "the others": counts(Counter({k: v for k, v in outcomes.items() if k != "open"})),
                "connects failed": str(failed),
                "API /healthz, from the first connect on": await health.stop(),
            },
        )
    finally:
        for task in tricklers:
            task.cancel()
        for t in tracked:
            t.close()
        await serve.stop()


async def api_huge_body(run: Run) -> Case:
    serve = Serve(run, "api-2gb")
    tracked: Tracked | None = None
    try:
        await serve.ready()
        assert serve.api_port is not None
        tracked = await Tracked.open(serve.api_port, ATTACKER)
        started = time.monotonic()
        tracked.writer.write(
            f"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {API_KEY}\r\n"
            "Content-Type: application/json\r\nContent-Length: 2000000000\r\n\r\n".encode()
        )
        for _ in range(120):
            if tracked.closed_at is not None:
                break
            await asyncio.sleep(0.1)
        answer = tracked.answer
        answered = "no answer within 12 s"
        with contextlib.suppress(ValueError):
            answered = f"{status_of(answer)}"
        closed = (
            "held open after 12 s"
            if tracked.closed_at is None
            else f"closed by the server after {tracked.closed_at - started:.1f} s"
        )
        return Case(
            "POST /api/publish, Content-Length: 2000000000, no body",
            {"answer": answered, "connection": closed},
        )
    finally:
        if tracked is not None:
            tracked.close()
        await serve.stop()


async def drill_api(run: Run) -> list[Case]:
    cases = []
    for step in (api_idle, api_slowloris, api_huge_body):
        log(f"api: {step.__name__}")
        cases.append(await step(run))
    return cases


# ------------------------------------------------------------------ 3. descriptors


async def upgrade_once(port: int, source: str) -> tuple[str, asyncio.StreamWriter | None]:
    """Ask for an upgrade; the answer's status, or how it failed; the writer if 101."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 20
        )
    except (OSError, TimeoutError):
        return "connect failed", None
    writer.write(upgrade_request(port, "/ws"))
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        writer.transport.abort()
        return "closed without an answer", None
    except TimeoutError:
        writer.transport.abort()
        return "no answer in 20 s", None
    status = str(status_of(head))
    if status != "101":
        writer.transport.abort()
        return status, None
    return status, writer


async def descriptors_case(run: Run, max_connections: int) -> Case:
    serve = Serve(
        run, f"nofile-{max_connections}", ("--max-connections", str(max_connections)), nofile=1024
    )
    writers: list[asyncio.StreamWriter] = []
    try:
        await serve.ready()
        assert serve.api_port is not None
        await asyncio.sleep(0.5)  # let start-up warnings reach the log
        start_metrics = await serve.metrics()
        started = time.monotonic()
        results = await asyncio.gather(
            *(upgrade_once(serve.port, CROWD[n % len(CROWD)]) for n in range(1500))
        )
        burst_seconds = time.monotonic() - started
        writers = [writer for _, writer in results if writer is not None]
        # Probed after the burst, not during it: a probe's socket taken during the burst would
        # hold one of the last descriptors for the probe itself.
        ws_health, api_health = HealthProbe(serve.port), HealthProbe(serve.api_port)
        await asyncio.sleep(3.0)  # the admitted clients stay connected meanwhile
        health_during = f"WS port {await ws_health.stop()}; API port {await api_health.stop()}"
        # Ten admitted clients leave: is the port still taking new ones?
        for writer in writers[:10]:
            writer.transport.abort()
        writers = writers[10:]
        await asyncio.sleep(1.0)
        late, late_writer = await upgrade_once(serve.port, PROBE)
        if late_writer is not None:
            writers.append(late_writer)
        after = (
            f"a new upgrade: {late}; /healthz WS port {await healthy(serve.port)}, "
            f"API port {await healthy(serve.api_port)}"
        )
        try:
            end_metrics = await serve.metrics()
        except (OSError, TimeoutError, RuntimeError, ValueError) as exc:
            end_metrics = {}
            after += f"; /metrics failed ({type(exc).__name__})"
        warnings = [
            line.strip() for line in serve.child.log().splitlines() if "open-file limit" in line
        ]
        cap = start_metrics.get("roomcast_max_connections")
        served = end_metrics.get("roomcast_connections", float("nan"))
        errors = end_metrics.get("roomcast_accept_errors_total")
        return Case(
            f"RLIMIT_NOFILE 1,024, --max-connections {max_connections:,}",
            {
                "start-up warning": ("yes: " + warnings[0][warnings[0].find("the open-file") :])
                if warnings
                else "none",
                "admitted cap (roomcast_max_connections)": "not exposed"
                if cap is None
                else f"{cap:,.0f}",
                "1,500 upgrades at once": counts(Counter(status for status, _ in results))
                + f" (in {burst_seconds:.1f} s)",
                "/healthz in the 3 s after the burst, admitted clients connected "
                "(every 0.5 s, 1 s timeout)": health_during,
                "once 10 admitted clients left": after,
                "connections then (roomcast_connections)": f"{served:,.0f}",
                "roomcast_accept_errors_total": "not exposed"
                if errors is None
                else f"{errors:,.0f}",
            },
        )
    finally:
        for writer in writers:
            writer.transport.abort()
        await serve.stop()


async def drill_descriptors(run: Run) -> list[Case]:
    cases = []
    for max_connections in (18_000, 900):
        log(f"descriptors: --max-connections {max_connections}")
        cases.append(await descriptors_case(run, max_connections))
    return cases


# ------------------------------------------------------------------ 4. FastAPI slow consumers


def server_sockets(port: int, peers: set[int]) -> tuple[int, int]:
    """ESTABLISHED sockets on local port ``port`` whose peer port is in ``peers``, and their
    Send-Q bytes summed (``ss -tn``)."""
    done = subprocess.run(
        ["ss", "-tnH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    count = queued = 0
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        if int(fields[-1].rpartition(":")[2]) in peers:
            count += 1
            queued += int(fields[1])
    return count, queued


async def drill_fastapi(run: Run) -> list[Case]:
    port = run.ports.take()
    server = run.spawn(
        "fastapi-uvicorn",
        [
            *(sys.executable, "-m", "uvicorn", "apps:roomcast_app", "--app-dir", str(BENCH_DIR)),
            *("--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop"),
            *("--http", "httptools", "--log-level", "warning"),
        ],
    )
    stalled: list[WsClient] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, TimeoutError, ValueError):
                if (await http(port, "GET", "/bench/count"))[0] == 200:
                    break
            if not server.alive():
                raise RuntimeError(f"uvicorn exited: {server.log()[-600:]}")
            await asyncio.sleep(0.1)
        for n in range(20):
            stalled.append(
                await ws_connect(
                    port, "/ws", source=CROWD[n % len(CROWD)], rcvbuf=4096, stall=True, parse=False
                )
            )
        peers = {
            int(client.transport.get_extra_info("sockname")[1])
            for client in stalled
            if client.transport is not None
        }
        started = time.monotonic()
        status, body = await http(
            port,
            "POST",
            "/bench/broadcast?count=800&size=8192&interval_ms=1&timeout_s=30",
            limit=45,
        )
        broadcast = json.loads(body) if status == 200 else {}
        flood_end = time.monotonic()
        at_end = server_sockets(port, peers)
        _, stats_body = await http(port, "GET", "/bench/stats", limit=5)
        stats = json.loads(stats_body)
        await asyncio.sleep(max(0.0, flood_end + 15 - time.monotonic()))
        later = server_sockets(port, peers)
        return [
            Case(
                "20 clients that never read (SO_RCVBUF 4 KiB), 800 x 8 KiB broadcasts",
                {
                    "broadcast": f"{broadcast.get('messages_sent', '?')} sent in "
                    f"{flood_end - started:.1f} s (completed: {broadcast.get('completed')})",
                    "slow-consumer closes (ManagerStats)": str(stats.get("slow_consumer_closes")),
                    "server sockets ESTABLISHED at the end of the flood": f"{at_end[0]} "
                    f"(Send-Q {mb(at_end[1])})",
                    "15 s later (close_timeout 5 s + 10 s)": f"{later[0]} (Send-Q {mb(later[1])})",
                },
            )
        ]
    finally:
        abort_all(stalled)
        await server.stop()


# ------------------------------------------------------------------ 5. rooms and memory


def room_name(index: int, chars: int) -> str:
    """A distinct room name of ``chars`` four-byte characters (the last four encode index)."""
    digits = "".join(chr(0x20000 + (index >> shift) % 1024) for shift in (30, 20, 10, 0))
    return "\U0001f600" * (chars - 4) + digits


class Replies:
    """Counts the answers (ack / error, with the error texts) the crowd gets; ``all_in`` is
    set once ``expected`` arrived."""

    def __init__(self, expected: int = 0) -> None:
        self.kinds: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.expected = expected
        self.all_in = asyncio.Event()

    def on_text(self, payload: bytes) -> None:
        message = json.loads(payload)
        kind = str(message.get("type"))
        self.kinds[kind] += 1
        if kind == "error":
            text = re.sub(r"\d[\d,]*", "N", str(message.get("error", "")))
            self.errors[text[:70]] += 1
        if self.expected and self.answers >= self.expected:
            self.all_in.set()

    @property
    def answers(self) -> int:
        return self.kinds["ack"] + self.kinds["error"]


async def rooms_case(run: Run, chars: int) -> Case:
    serve = Serve(run, f"rooms-{chars}", ("--max-rooms", "100000"))
    clients: list[WsClient] = []
    replies = Replies(expected=200_000)
    peak = 0
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, serve.rss())
            await asyncio.sleep(0.2)

    try:
        await serve.ready()
        await asyncio.sleep(1.0)
        before = serve.rss()
        nul = Replies()
        probe = await ws_connect(serve.port, "/ws", source=PROBE, on_text=nul.on_text)
        clients.append(probe)
        probe.send(text_frame({"type": "join", "room": "nul\x00room"}))
        clients += await connect_many(serve.port, ["/ws"] * 2000, replies.on_text)
        connected = serve.rss()
        sampler = asyncio.create_task(sample())
        started = time.monotonic()
        for n, client in enumerate(clients[1:]):
            client.send(
                b"".join(
                    text_frame({"type": "join", "room": room_name(n * 100 + r, chars)})
                    for r in range(100)
                )
            )
            if n % 50 == 49:
                await asyncio.sleep(0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(replies.all_in.wait(), 120)
        joined_in = time.monotonic() - started
        rooms = (await serve.metrics()).get("roomcast_rooms", float("nan"))
        await asyncio.sleep(0.5)
        sampling = False
        await sampler
        abort_all(clients)
        gone = await wait_for_metric(serve, "roomcast_connections", lambda v: v == 0, 30)
        await asyncio.sleep(10)
        after = serve.rss()
        refused = ", ".join(f"{n:,} x {text!r}" for text, n in replies.errors.most_common(3))
        nul_answer = "no answer" if not nul.kinds else counts(nul.kinds)
        if nul.errors:
            nul_answer += f" ({next(iter(nul.errors))!r})"
        return Case(
            f"2,000 x 100 rooms, names of {chars} four-byte chars ({4 * chars:,} B)",
            {
                "joins acked": f"{replies.kinds['ack']:,} of 200,000 (in {joined_in:.1f} s)",
                "joins refused": f"{replies.kinds['error']:,}"
                + (f": {refused}" if refused else ""),
                "rooms held (roomcast_rooms)": f"{rooms:,.0f}",
                "join of 'nul\\x00room'": nul_answer,
                "server RSS: before / 2,000 connected / peak / 10 s after all left": (
                    f"{mb(before)} / {mb(connected)} / {mb(peak)} / {mb(after)}"
                ),
                "kept after all left (RSS after - before)": f"{mb(after - before)}"
                + ("" if gone == 0 else f" (connections still counted: {gone})"),
                **serve.extra(),
            },
        )
    finally:
        sampling = False
        abort_all(clients)
        await serve.stop()


async def drill_rooms(run: Run) -> list[Case]:
    cases = []
    for chars in (64, 256):
        log(f"rooms: names of {chars} four-byte characters")
        cases.append(await rooms_case(run, chars))
    return cases


# ------------------------------------------------------------------ 6. presence snapshots


class Snapshots:
    """Counts the presence snapshots (member lists) a watcher gets."""

    def __init__(self) -> None:
        self.count = 0

    def on_text(self, payload: bytes) -> None:
        if b'"members"' in payload:
            self.count += 1


async def drill_presence(run: Run) -> list[Case]:
    serve = Serve(run, "presence")
    members: list[WsClient] = []
    cases: list[Case] = []
    try:
        await serve.ready()
        members = await connect_many(serve.port, ["/ws/big"] * 2000)
        await wait_for_metric(serve, "roomcast_connections", lambda v: v >= 2000, 20)
        join = text_frame({"type": "join", "room": "$presence:big"})
        for attempt in (1, 2):
            log(f"presence: window {attempt}")
            snapshots = Snapshots()
            watcher = await ws_connect(
                serve.port,
                f"/ws/big?user_id=watcher{attempt}",
                source=NEIGHBOUR,
                on_text=snapshots.on_text,
            )
            try:
                first = await serve.metrics()
                cpu, started = serve.cpu(), time.monotonic()
                for k in range(1150):  # 100 a second for 11.5 s
                    await asyncio.sleep(max(0.0, started + k * 0.01 - time.monotonic()))
                    watcher.send(join)
                await asyncio.sleep(max(0.0, started + 11.5 - time.monotonic()))
                window = time.monotonic() - started
                cpu_used = serve.cpu() - cpu
                received = watcher.received
                watcher_end = watcher.how_it_ended(started)
                last = await serve.metrics()
            finally:
                watcher.abort()
            coalesced = last.get("roomcast_presence_snapshots_coalesced_total")
            limited = last.get("roomcast_rate_limited_total", 0) - first.get(
                "roomcast_rate_limited_total", 0
            )
            figures = {
                "joins sent": "1,150 in 11.5 s",
                "bytes received": mb(received),
                "snapshots received": f"{snapshots.count:,}",
                "the watcher at the end": watcher_end,
                "server CPU": f"{100 * cpu_used / window:.1f} % of a core",
                "rate-limited messages (roomcast_rate_limited_total)": f"{limited:,.0f}",
            }
            if coalesced is not None:
                before = first.get("roomcast_presence_snapshots_coalesced_total", 0)
                figures["requests coalesced"] = f"{coalesced - before:,.0f}"
            cases.append(Case(f"2,000 members, run {attempt}", figures))
            await asyncio.sleep(2)
        return cases
    finally:
        abort_all(members)
        await serve.stop()


# ------------------------------------------------------------------ 7. numeric-string exp


def hs256_token(claims: dict[str, Any], secret: str) -> str:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = part(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = part(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{part(signature)}"


async def drill_exp(run: Run) -> list[Case]:
    serve = Serve(run, "exp", ("--jwt-secret", JWT_SECRET), ("--token-grace", "1"))
    client: WsClient | None = None
    warned: list[float] = []

    def on_text(payload: bytes) -> None:
        message = json.loads(payload)
        if message.get("type") == "error" and message.get("code") == 4001:
            warned.append(time.time())

    try:
        await serve.ready()
        exp = int(time.time()) + 2
        token = hs256_token({"sub": "drill", "exp": str(exp)}, JWT_SECRET)
        try:
            client = await ws_connect(serve.port, f"/ws?token={token}", on_text=on_text)
        except Refused as exc:
            return [Case("exp as a numeric string", {"connect": f"refused ({exc.status})"})]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(client.ended), exp + 10 - time.time())
        ended = (
            f"closed {client.close_code or 'without a close frame'} at exp + "
            f"{client.ended_at - time.monotonic() + time.time() - exp:.1f} s"
            if client.ended.done()
            else "still open 10 s after exp"
        )
        return [
            Case(
                'token {"exp": "<now + 2>"} (a string), --token-grace 1',
                {
                    "connect": "accepted (101)",
                    "expiry warning (error 4001)": f"at exp + {warned[0] - exp:.1f} s"
                    if warned
                    else "none",
                    "connection": ended,
                },
            )
        ]
    finally:
        if client is not None:
            client.abort()
        await serve.stop()


# ------------------------------------------------------------------ 8. kill -9 of the supervisor


def alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


async def drill_supervisor(run: Run) -> list[Case]:
    redis = RedisServer(run, "supervisor-redis")
    serve = Serve(run, "supervisor", ("--workers", "2"), ("--redis-url", redis.url))
    clients: list[WsClient] = []
    try:
        await redis.start()
        await serve.ready()
        deadline = time.monotonic() + 20
        workers: list[int] = []
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = [p.pid for p in psutil.Process(serve.pid).children()]
            await asyncio.sleep(0.1)
        clients = await connect_many(serve.port, ["/ws/r"] * 4)
        killed = time.monotonic()
        os.kill(serve.pid, signal.SIGKILL)
        gone_after: dict[int, float] = {}
        while time.monotonic() < killed + 10:
            for pid in workers:
                if pid not in gone_after and not alive(pid):
                    gone_after[pid] = time.monotonic() - killed
            await asyncio.sleep(0.1)
        left = [pid for pid in workers if alive(pid)]
        gone = ", ".join(f"{seconds:.1f} s" for seconds in sorted(gone_after.values()))
        return [
            Case(
                "--workers 2 --redis-url, 4 clients, SIGKILL to the supervisor",
                {
                    "workers alive 10 s later": f"{len(left)} of {len(workers)}"
                    + (f" ({len(gone_after)} gone after {gone})" if gone else ""),
                    "WS port /healthz 10 s later": await healthy(serve.port),
                    "clients": counts(
                        Counter(c.how_it_ended(killed).split(" after")[0] for c in clients)
                    ),
                },
            )
        ]
    finally:
        abort_all(clients)
        await serve.stop()  # the group: the orphaned workers too
        redis.kill()


# ------------------------------------------------------------------ 9. logs


async def publish(port: int, message: dict[str, Any]) -> int:
    status, _ = await http(
        port,
        "POST",
        "/api/publish",
        body=json.dumps(message).encode(),
        headers=[f"X-API-Key: {API_KEY}", "Content-Type: application/json"],
        limit=10,
    )
    return status


async def logs_slow_consumers(run: Run) -> Case:
    serve = Serve(run, "logs-slow")
    stalled: list[WsClient] = []
    try:
        await serve.ready()
        assert serve.api_port is not None
        for n in range(25):
            stalled.append(
                await ws_connect(
                    serve.port,
                    f"/ws/slow?user_id=slow{n}",
                    source=CROWD[n % len(CROWD)],
                    rcvbuf=4096,
                    stall=True,
                    parse=False,
                )
            )
        batch = {"room": "slow", "batch": ["x" * 60_000] * 8}
        statuses: Counter[str] = Counter()
        closes = 0.0
        for n in range(60):  # 480 KB a request: at most 29 MB for each client
            statuses[str(await publish(serve.api_port, batch))] += 1
            if n % 4 == 3:
                closes = (await serve.metrics()).get("roomcast_slow_consumer_closes_total", 0)
                if closes >= 25:
                    break
        await asyncio.sleep(1.0)
        lines = [
            line
            for line in serve.child.log().splitlines()
            if "WARNING" in line and re.search(r"slow", line, re.IGNORECASE)
        ]
        return Case(
            "25 clients that never read (SO_RCVBUF 4 KiB), publishes of 8 x 60 KB",
            {
                "publish answers": counts(statuses),
                "slow-consumer closes (metric)": f"{closes:.0f}",
                "WARNING lines about them": str(len(lines)),
            },
        )
    finally:
        abort_all(stalled)
        await serve.stop()


async def logs_redis_outage(run: Run) -> Case:
    redis = RedisServer(run, "logs-redis")
    serve = Serve(run, "logs-outage", ("--redis-url", redis.url), ("--stats-interval", "0"))
    member: WsClient | None = None
    try:
        await redis.start()
        await serve.ready()
        assert serve.api_port is not None
        member = await ws_connect(serve.port, "/ws/r?user_id=member", source=NEIGHBOUR)
        first = await serve.metrics()
        redis.kill()
        await asyncio.sleep(1.0)
        statuses: Counter[str] = Counter()
        started = time.monotonic()
        for n in range(1060):
            try:
                statuses[str(await publish(serve.api_port, {"room": "r", "data": f"m{n}"}))] += 1
            except (OSError, TimeoutError, ValueError) as exc:
                statuses[type(exc).__name__] += 1
        published_in = time.monotonic() - started
        await redis.start()  # the same port: Redis is back
        await serve.ready()
        await asyncio.sleep(1.5)
        last = await serve.metrics()
        name = "roomcast_broker_publish_failures_total"
        failures = last.get(name, float("nan")) - first.get(name, 0)
        sums = [
            int(n)
            for n in re.findall(r"(\d+) message\(s\) could not be published", serve.child.log())
        ]
        return Case(
            "Redis killed; 1,060 POST /api/publish to a room with a member; Redis back",
            {
                "publish answers": f"{counts(statuses)} (in {published_in:.1f} s)",
                f"{name} (increase)": f"{failures:,.0f}",
                "'N message(s) could not be published' lines": f"{len(sums)}, summing to "
                f"{sum(sums):,}"
                + (f" ({' + '.join(map(str, sums))})" if 1 < len(sums) < 6 else ""),
            },
        )
    finally:
        if member is not None:
            member.abort()
        await serve.stop()
        redis.kill()


async def drill_logs(run: Run) -> list[Case]:
    log("logs: slow consumers")
    cases = [await logs_slow_consumers(run)]
    log("logs: Redis outage")
    cases.append(await logs_redis_outage(run))
    return cases


# ------------------------------------------------------------------ driver

DRILLS = (
    Drill("frames", "Empty continuation frames and a ping flood", 150, drill_frames),
    Drill("api", "API port: idle, slowloris and a 2 GB declared body", 90, drill_api),
    Drill(
        "descriptors", "Descriptors: RLIMIT_NOFILE 1,024, a burst of 1,500", 120, drill_descriptors
    ),
    Drill("fastapi", "FastAPI path: clients that never read", 90, drill_fastapi),
    Drill("rooms", "Rooms and memory", 300, drill_rooms),
    Drill("presence", "Presence snapshots re-asked 100 times a second", 90, drill_presence),
    Drill("exp", "Numeric-string exp", 40, drill_exp),
    Drill("supervisor", "kill -9 of the supervisor", 60, drill_supervisor),
    Drill("logs", "Log lines: slow consumers and a Redis outage", 120, drill_logs),
)


def table_row(drill: str, case: Case) -> str:
    figures = "; ".join(f"{name}: {value}" for name, value in case.figures.items())
    return f"| {drill} | {case.label} | {figures} |"


async def run_drills(args: argparse.Namespace, tree: Tree, log_dir: Path) -> dict[str, Any]:
    selected = [d for d in DRILLS if not args.only or d.name in args.only]
    run = Run(tree, Ports(args.port_base), log_dir)
    results: dict[str, list[dict[str, Any]]] = {}
    print("| drill | case | figures |\n|---|---|---|", flush=True)
    try:
        for drill in selected:
            log(f"drill {drill.name}: {drill.title} (at most {drill.limit:.0f} s)")
            started = time.monotonic()
            try:
                async with asyncio.timeout(drill.limit):
                    cases = await drill.run(run)
            except Exception as exc:  # one failed drill must not lose the others
                cases = [Case("drill failed", {"error": f"{type(exc).__name__}: {exc}"[:300]})]
            finally:
                run.kill_all()
            log(f"drill {drill.name} took {time.monotonic() - started:.0f} s")
            for case in cases:
                print(table_row(drill.name, case), flush=True)
            results[drill.name] = [dataclasses.asdict(case) for case in cases]
    finally:
        run.kill_all()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/hardening.py", *sys.argv[1:]]),
        "src": str(tree.src),
        "commit": tree.commit,
        "local_changes": tree.local_changes,
        "drills": {d.name: d.title for d in selected},
        "results": results,
    }


def compare(before_path: Path, after_path: Path) -> str:
    """Before/after Markdown tables, one per drill, from two ``--json`` files."""
    before, after = (json.loads(path.read_text()) for path in (before_path, after_path))
    out = []
    titles = {d.name: d.title for d in DRILLS}
    head_b, head_a = f"before (`{before['commit'][:7]}`)", f"after (`{after['commit'][:7]}`)"
    for name, title in titles.items():
        cases_b = {c["label"]: c["figures"] for c in before["results"].get(name, [])}
        cases_a = {c["label"]: c["figures"] for c in after["results"].get(name, [])}
        if not cases_b and not cases_a:
            continue
        out.append(
            f"### {title} (`{name}`)\n\n| case | figure | {head_b} | {head_a} |\n|---|---|---|---|"
        )
        for label in dict.fromkeys([*cases_b, *cases_a]):
            figures_b, figures_a = cases_b.get(label, {}), cases_a.get(label, {})
            for n, figure in enumerate(dict.fromkeys([*figures_b, *figures_a])):
                out.append(
                    f"| {'' if n else label} | {figure} | {figures_b.get(figure, '-')} | "
                    f"{figures_a.get(figure, '-')} |"
                )
        out.append("")
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--src", type=Path, default=REPO / "src", help="roomcast source tree (its src directory)"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="drills to run, comma-separated or repeated: " + ", ".join(d.name for d in DRILLS),
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--port-base",
        type=int,
        default=65481,
        help="first port servers use (taken ones are skipped)",
    )
    parser.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("BEFORE", "AFTER"),
        help="print before/after tables from two --json files and exit",
    )
    args = parser.parse_args(argv)
    args.only = [name for item in args.only for name in item.split(",") if name]
    unknown = set(args.only) - {d.name for d in DRILLS}
    if unknown:
        parser.error(f"unknown drill(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare:
        print(compare(*args.compare))
        return 0
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tree = Tree.load(args.src.resolve())
    log_dir = RESULTS_DIR / f"hardening-{time.strftime('%Y%m%d-%H%M%S')}-{tree.commit[:7]}"
    log_dir.mkdir(parents=True, exist_ok=True)
    log(f"roomcast from {tree.imported_from} at {tree.commit[:12]}; server logs in {log_dir}")
    # SIGTERM ends the run like Ctrl-C: the drills' finally blocks stop their processes.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        report = runner.run(run_drills(args, tree, log_dir))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        log(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
