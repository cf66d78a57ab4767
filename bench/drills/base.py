"""What every drill uses: the tree under test, a run's ports and processes, ``roomcast serve``
of that tree, a drill and its cases, and the source addresses the clients come from.

Every server runs as ``python -m roomcast.cli serve`` (the compatibility path, which old trees
have too) with ``PYTHONPATH=<--src>``, in a session of its own (``harness.processes``), so that
stopping it reaches its workers too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from harness.processes import ServerProcess, die_with_parent
from harness.raw_http import request
from harness.targets import parse_metrics
from roomcast.testing import RedisServer

__all__ = [
    "API_KEY",
    "ATTACKER",
    "CROWD",
    "NEIGHBOUR",
    "PROBE",
    "Case",
    "Drill",
    "Ports",
    "Run",
    "Serve",
    "Tree",
    "terminate",
    "wait_for_metric",
]

API_KEY = "hardening-drill-key"
ATTACKER, NEIGHBOUR, PROBE = "127.0.0.2", "127.0.0.3", "127.0.0.4"
"""Source addresses of the attacker, of its neighbour, and of the probes (HTTP requests,
``/readyz``, ``/metrics``, ``/healthz``)."""
CROWD = ("127.0.1.2", "127.0.1.3", "127.0.1.4", "127.0.1.5")
"""Source addresses of many-client drills (each has its own ephemeral ports)."""


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


# ------------------------------------------------------------------ a run


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
    """One run of the drills against one tree: its ports, its logs, what it started."""

    tree: Tree
    ports: Ports
    log_dir: Path
    processes: list[ServerProcess] = dataclasses.field(default_factory=list)
    redis_servers: list[RedisServer] = dataclasses.field(default_factory=list)

    def spawn(
        self, name: str, argv: Sequence[str], env: dict[str, str] | None = None, nofile: int = 0
    ) -> ServerProcess:
        """A process with the tree on its ``PYTHONPATH``, in a session of its own, output to
        ``LOG_DIR/NAME.log`` (appended to); ``nofile``: its ``RLIMIT_NOFILE``."""
        full_env = {
            **os.environ,
            "PYTHONPATH": str(self.tree.src),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        process = ServerProcess(
            argv,
            self.log_dir / f"{name}.log",
            env=full_env,
            session=True,
            nofile=nofile,
            append=True,
        )
        self.processes.append(process)
        return process

    def redis_server(self, name: str) -> RedisServer:
        """A throwaway redis-server (not started yet) on a port of this run, restartable on
        it, output to ``LOG_DIR/NAME.log``."""
        redis = RedisServer(
            self.ports.take(), log_path=self.log_dir / f"{name}.log", preexec_fn=die_with_parent
        )
        self.redis_servers.append(redis)
        return redis

    def kill_all(self) -> None:
        """SIGKILL to every process this run started (a second time does no harm)."""
        for process in self.processes:
            process.stop()
        for redis in self.redis_servers:
            redis.close()


async def terminate(process: ServerProcess) -> None:
    """SIGTERM to its group, SIGKILL to what is left 5 s later."""
    await asyncio.to_thread(process.terminate, 5.0)


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
        self.name = name
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
        self.process = run.spawn(name, argv, {"ROOMCAST_API_KEY": API_KEY}, nofile)
        self.pid = self.process.pid

    @property
    def control_port(self) -> int:
        """Where /readyz and /metrics are asked: the API port if there is one."""
        return self.api_port if self.api_port is not None else self.port

    async def ready(self, limit: float = 30.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.process.exited():
                raise RuntimeError(f"{self.name} exited: {self.process.output()[-600:]}")
            with contextlib.suppress(OSError, TimeoutError, ValueError):
                status, _ = await request(
                    self.control_port, "GET", "/readyz", source=PROBE, limit=1.0
                )
                if status == 200:
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready within {limit:.0f} s")

    async def metrics(self, limit: float = 3.0) -> dict[str, float]:
        """``GET /metrics`` as {sample: value}."""
        status, body = await request(
            self.control_port, "GET", "/metrics", source=PROBE, limit=limit
        )
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        return parse_metrics(body.decode())

    def log(self) -> str:
        return self.process.output()

    def rss(self) -> int:
        """Resident set size, bytes."""
        return int(self.process.rss_kib() * 1024)

    def cpu(self) -> float:
        """User + system seconds so far."""
        return self.process.cpu_s()

    def extra(self) -> dict[str, str]:
        """A figure naming the flags left out, if any."""
        if not self.left_out:
            return {}
        return {"flags left out (not in this version)": " ".join(self.left_out)}

    async def stop(self) -> None:
        await terminate(self.process)


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


# ------------------------------------------------------------------ drills and their results


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
