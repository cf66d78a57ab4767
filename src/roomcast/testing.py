"""Throwaway servers for tests: a free port, and a ``redis-server`` of the test's own.

For roomcast's own tests and benchmarks, and for users' tests of code built on roomcast: real
sockets and a real Redis, never a mock.  A ``RedisServer`` listens on its own port with no
persistence, and a fault test may kill, freeze and restart it::

    from roomcast.testing import redis_server

    with redis_server() as redis:
        manager = DistributedWebSocketManager(redis.url)
        ...
        redis.kill()
        redis.start()  # the same port: clients see a Redis restart

It never touches a Redis it did not start (a shared one may hold someone's data): ``start``
refuses a port where something already listens.  This module imports only the standard library,
and ``import roomcast`` does not import it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["REDIS_CLI", "REDIS_SERVER", "RedisServer", "free_port", "redis_server"]

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now (racy, but on loopback it holds)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _answers_ping(port: int) -> bool:
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", port), timeout=1) as sock,
    ):
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")
    return False


class RedisServer:
    """One ``redis-server`` on 127.0.0.1:``port``, started by the caller.

    Args:
        port: Port to listen on; a free one if omitted.
        extra: More ``redis-server`` arguments (e.g. cluster mode, ``--maxclients``).
        log_path: Where its output goes (truncated on the first start, appended to on a
            restart); discarded if omitted.
        preexec_fn: Run in the child before ``exec``, as ``subprocess.Popen``'s (e.g. to ask
            for a signal when the parent dies).
    """

    def __init__(
        self,
        port: int | None = None,
        extra: tuple[str, ...] = (),
        *,
        log_path: Path | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed (Redis >= 7 is needed)")
        self.port = port or free_port()
        self.extra = extra
        self.log_path = log_path
        self.preexec_fn = preexec_fn
        self.directory = Path(tempfile.mkdtemp(prefix="roomcast-redis-"))
        self.process: subprocess.Popen[bytes] | None = None
        self._starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The running server's process id."""
        if self.process is None:
            raise RuntimeError("redis-server was not started")
        return self.process.pid

    def start(self, timeout: float = 10.0) -> None:
        """Start (or restart) and wait until it answers PING.

        Raises:
            RuntimeError: something else listens on the port, or the server exited or did not
                answer within ``timeout`` seconds.
        """
        assert REDIS_SERVER is not None
        if _listening(self.port):
            raise RuntimeError(f"port {self.port} is taken: another server listens there")
        command = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        with contextlib.ExitStack() as stack:
            if self.log_path is None:
                output = stack.enter_context(open(os.devnull, "wb"))
            else:
                output = stack.enter_context(self.log_path.open("ab" if self._starts else "wb"))
            self.process = subprocess.Popen(
                [*command, *self.extra],
                stdout=output,
                stderr=subprocess.STDOUT,
                preexec_fn=self.preexec_fn,
            )
        self._starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if _answers_ping(self.port):
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not answer")

    def kill(self) -> None:
        """SIGKILL: connections drop at once, nothing is saved."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def freeze(self) -> None:
        """SIGSTOP: sockets stay open but nothing answers (a half-dead Redis)."""
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after ``freeze``."""
        os.kill(self.pid, signal.SIGCONT)

    def cli(self, *args: str) -> str:
        """Run ``redis-cli`` against this server; its output, stripped ("" on failure)."""
        if REDIS_CLI is None:
            raise RuntimeError("redis-cli is not installed")
        done = subprocess.run(
            [REDIS_CLI, "-h", "127.0.0.1", "-p", str(self.port), *args],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return done.stdout.decode(errors="replace").strip()

    def channels(self, pattern: str = "*") -> set[str]:
        """``PUBSUB CHANNELS pattern``: the channels someone is subscribed to."""
        output = self.cli("PUBSUB", "CHANNELS", pattern)
        return set(output.splitlines()) if output else set()

    def close(self) -> None:
        """Kill it (thawed first, if frozen) and remove its directory."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def redis_server(port: int | None = None, extra: tuple[str, ...] = ()) -> Iterator[RedisServer]:
    """A started ``RedisServer``, killed and removed afterwards."""
    server = RedisServer(port, extra)
    try:
        server.start()
        yield server
    finally:
        server.close()
