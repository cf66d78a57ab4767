"""The servers under test: ``roomcast serve`` and the peers in ``peers/``, each a process
with a publish trigger, a connection count and (where it reports them) GC counters.

Every server is driven the same way: one HTTP request per broadcast (``roomcast serve``: its
publish API; the asyncio peers: ``POST /bench/publish`` on a control port served by
``peers/control.py``; socketify: a ``GET`` route of its own).
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import signal
import sys
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.processes import ServerProcess
from harness.publisher import ClientPublisher
from harness.runs import BENCH_DIR

__all__ = [
    "API_KEY",
    "PACKAGES",
    "ROOM",
    "SPECS",
    "Spec",
    "Target",
    "envelope_bytes",
    "metrics_of",
    "parse_metrics",
]

VENV_BIN = Path(sys.executable).parent
API_KEY = "bench-key"
ROOM = "bench"
PACKAGES = (
    "roomcast",
    "picows",
    "uvloop",
    "websockets",
    "socketify",
    "fastapi",
    "uvicorn",
    "python-socketio",
    "python-engineio",
)
"""The packages of the servers in ``SPECS``, for the run metadata."""


@dataclasses.dataclass(frozen=True)
class Spec:
    """One server under test."""

    name: str
    what: str
    """One line for the report."""
    kind: str
    """``roomcast`` (publish API), ``control`` (peers.control port), ``socketify``."""
    path: str = "/ws"
    protocol: str = "ws"
    paced: bool = False
    """Keepalive pings every 20-25 s: its clients connect evenly over ``--connect-spread`` so
    the pings are a steady background instead of bursts that land in some rounds only."""
    gc_mode: str = ""
    """For the roomcast variants: ``peers/roomcast_launch.py``'s mode."""
    module: str = ""
    """``python -m`` module, or ``uvicorn`` app (``module:app``) of a peer."""
    uvicorn: bool = False
    flags: tuple[str, ...] = ()
    """Extra ``roomcast serve`` flags (e.g. ``--history-size 0``)."""
    publisher_path: str = ""
    """For ``roomcast``: publish through a WebSocket client connected at this path (with its
    query) instead of the publish API (``harness.publisher``)."""


SPECS: dict[str, Spec] = {
    spec.name: spec
    for spec in (
        Spec(
            "picows-raw",
            "picows on uvloop, frame bytes built once, underlying_transport.write per client",
            "control",
            module="peers.picows_raw",
        ),
        Spec(
            "roomcast",
            "`roomcast serve` as shipped (gc.collect(); gc.freeze() after start)",
            "roomcast",
            path=f"/ws/{ROOM}",
        ),
        Spec(
            "roomcast-ref",
            "`roomcast serve` from the source tree in $BENCH_ROOMCAST_REF (e.g. a git worktree "
            "of the previous commit): a before/after pair in one run",
            "roomcast",
            path=f"/ws/{ROOM}",
        ),
        Spec(
            "roomcast-nofreeze",
            "`roomcast serve` with gc.freeze a no-op (cyclic GC left alone)",
            "roomcast",
            path=f"/ws/{ROOM}",
            gc_mode="nofreeze",
        ),
        Spec(
            "roomcast-gc50k",
            "`roomcast serve` as shipped + gc.set_threshold(50_000, 20, 100)",
            "roomcast",
            path=f"/ws/{ROOM}",
            gc_mode="threshold",
        ),
        Spec(
            "websockets",
            "websockets 17 asyncio server (uvloop), websockets.broadcast(), compression off",
            "control",
            module="peers.websockets_broadcast",
            paced=True,
        ),
        Spec(
            "socketify",
            "socketify (uWebSockets) pub/sub, app.publish()",
            "socketify",
            module="peers.socketify_pubsub",
        ),
        Spec(
            "fastapi-plain",
            "FastAPI docs loop (`for ws in conns: await ws.send_text(m)`) on uvicorn",
            "control",
            module="peers.fastapi_plain:app",
            uvicorn=True,
            paced=True,
        ),
        Spec(
            "socketio",
            'python-socketio ASGI on uvicorn, `await sio.emit("m", data)`',
            "control",
            path="/socket.io/?EIO=4&transport=websocket",
            protocol="socketio",
            module="peers.socketio_app:app",
            uvicorn=True,
            paced=True,
        ),
    )
}
"""The servers ``serve.py`` compares; ``scaleout.py`` and ``idle.py`` run ``roomcast``."""


def envelope_bytes(spec: Spec, event: str = "m") -> int:
    """What a server adds around the message string in the frame it sends (Socket.IO: for
    the event name ``event``)."""
    if spec.kind == "roomcast":
        from roomcast.frame import encode
        from roomcast.protocol import RoomMessage

        if spec.publisher_path:  # (a client's message names it and its event id)
            client = RoomMessage(room=ROOM, sender="publisher", data="", event_id="p100")
            return encode(client).size
        return encode(RoomMessage(room=ROOM, data="")).size
    if spec.protocol == "socketio":
        return len(f'42["{event}",""]')
    return 0


def parse_metrics(text: str) -> dict[str, float]:
    """A Prometheus exposition as {sample name (with labels): value}."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                samples[name] = float(value)
    return samples


def metrics_of(port: int, timeout: float = 10.0) -> dict[str, float]:
    """``GET /metrics`` on a ``roomcast serve`` port, as {sample name: value}."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", "/metrics", headers={"Connection": "close"})
        response = connection.getresponse()
        body = response.read().decode()
        if response.status != 200:
            raise RuntimeError(f"GET /metrics on {port}: {response.status}")
    finally:
        connection.close()
    return parse_metrics(body)


class Target:
    """One server process, its publish trigger, its connection count.

    Args:
        spec: Which server.
        port: Its WebSocket port; the control (or API) port is ``port + 1`` (socketify: the
            same port).
        log_path: Its output.
        stats_path: Where the roomcast GC variants write their counters on SIGUSR1.
        extra_args: At the end of its command line (e.g. ``--redis-url``).
        extra_env: Added to its environment (e.g. the peers' Redis URL, a PYTHONPATH).
    """

    def __init__(
        self,
        spec: Spec,
        port: int,
        log_path: Path,
        stats_path: Path,
        extra_args: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.port = port
        self.control_port = port if spec.kind == "socketify" else port + 1
        self.stats_path = stats_path
        self.log_path = log_path
        env: dict[str, str] = dict(extra_env or {})
        common = ["--port", str(port)]
        if spec.kind == "roomcast":
            env["ROOMCAST_API_KEY"] = API_KEY
            serve = ["serve", *common, "--api-port", str(port + 1), "--log-level", "warning"]
            if spec.gc_mode:
                launch = [sys.executable, "-m", "peers.roomcast_launch"]
                command = [*launch, spec.gc_mode, str(stats_path), *serve]
            elif spec.name == "roomcast-ref":
                reference = os.environ.get("BENCH_ROOMCAST_REF")
                if not reference:
                    raise SystemExit("roomcast-ref needs BENCH_ROOMCAST_REF=<checkout of roomcast>")
                env["PYTHONPATH"] = str(Path(reference) / "src")
                command = [sys.executable, "-m", "roomcast.cli", *serve]
            else:
                command = [str(VENV_BIN / "roomcast"), *serve]
            command += spec.flags
        elif spec.uvicorn:
            env["BENCH_CONTROL_PORT"] = str(port + 1)
            command = [
                *(sys.executable, "-m", "uvicorn", spec.module, "--app-dir", str(BENCH_DIR)),
                *("--host", "127.0.0.1", *common, "--loop", "uvloop", "--http", "httptools"),
                *("--log-level", "warning"),
            ]
        elif spec.kind == "socketify":
            command = [sys.executable, "-m", spec.module, *common]
        else:
            command = [sys.executable, "-m", spec.module, *common]
            command += ["--control-port", str(port + 1)]
        command += extra_args
        self.command = command
        self.publisher: ClientPublisher | None = None
        if spec.publisher_path:
            self.publisher = ClientPublisher(f"ws://127.0.0.1:{port}{spec.publisher_path}", ROOM)
        self.process = ServerProcess(command, log_path, env={**os.environ, **env}, cwd=BENCH_DIR)

    @property
    def pid(self) -> int:
        return self.process.pid

    # -------------------------------------------------------------- HTTP

    def _request(
        self, method: str, path: str, body: bytes | None = None, timeout: float = 30.0
    ) -> bytes:
        connection = http.client.HTTPConnection("127.0.0.1", self.control_port, timeout=timeout)
        headers = {"Connection": "close"}
        if body is not None:
            headers["Content-Type"] = "application/json"
            if self.spec.kind == "roomcast":
                headers["X-API-Key"] = API_KEY
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(f"{self.spec.name} {method} {path}: {response.status} {data!r}")
            return data
        finally:
            connection.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.exited():
                raise RuntimeError(f"{self.spec.name} exited; see {self.log_path}")
            with contextlib.suppress(OSError, RuntimeError):
                self.count()
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.spec.name} not ready after {timeout}s")

    def count(self) -> int:
        if self.spec.kind == "roomcast":
            for line in self._request("GET", "/metrics", timeout=5).decode().splitlines():
                if line.startswith("roomcast_connections "):
                    return int(float(line.split()[1]))
            raise RuntimeError("no roomcast_connections in /metrics")
        return int(json.loads(self._request("GET", "/bench/count", timeout=5))["connections"])

    def wait_count(self, wanted: int, timeout: float, poll: float = 0.25) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count() >= wanted:
                return True
            time.sleep(poll)
        return False

    def publish(self, batch: list[str], timeout: float) -> bytes:
        """Broadcast ``batch`` (back to back, in order) to every client; returns the answer's
        body (``roomcast serve``: with the position of the last message, in a room with
        history)."""
        if self.publisher is not None:
            return self.publisher.publish(batch, timeout)
        if self.spec.kind == "roomcast":
            if len(batch) == 1:
                request: dict[str, Any] = {"room": ROOM, "data": batch[0]}
            else:
                request = {"room": ROOM, "batch": batch}
            return self._request("POST", "/api/publish", json.dumps(request).encode(), timeout)
        if self.spec.kind == "socketify":
            query = urllib.parse.quote(json.dumps(batch))
            return self._request("GET", f"/bench/publish?batch={query}", timeout=timeout)
        return self._request(
            "POST", "/bench/publish", json.dumps({"batch": batch}).encode(), timeout
        )

    def gc_stats(self) -> dict[str, Any] | None:
        """Cyclic-GC passes and seconds per generation, where the server reports them."""
        if self.spec.kind == "control":
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                stats: dict[str, Any] = json.loads(self._request("GET", "/bench/stats"))
                return stats
            return None
        if self.spec.kind != "roomcast" or not self.spec.gc_mode:
            return None
        before = self.stats_path.stat().st_mtime_ns if self.stats_path.exists() else 0
        self.process.signal(signal.SIGUSR1)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                if self.stats_path.stat().st_mtime_ns != before:
                    stats = json.loads(self.stats_path.read_text())
                    return stats
            time.sleep(0.02)
        return None

    # -------------------------------------------------------------- process figures

    def rss_kib(self) -> float:
        return self.process.rss_kib()

    def cpu_ns(self) -> int:
        """Nanoseconds on CPU, user + system, all threads (``/proc/PID/task/*/schedstat``):
        the same time as utime + stime without their 10 ms clock-tick steps."""
        return self.process.cpu_ns()

    def user_sys_s(self) -> tuple[float, float]:
        return self.process.user_sys_s()

    def stop(self) -> None:
        if self.publisher is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self.publisher.close()
        self.process.stop()
