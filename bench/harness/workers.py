"""The driver's side of the client workers (``clients.py``): start them, command them over
their pipes, wait for deliveries.

A command goes to every worker of a group, and the answers are collected in order; ``send``
and ``receive`` apart let the driver start a command in several groups at once.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import multiprocessing.process
import time
from array import array
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection as Pipe
from typing import Any

import psutil

from harness.clients import run_worker
from harness.processes import cpu_ns_of

__all__ = [
    "Workers",
    "connect_counts",
    "handshake_times",
    "shares",
    "split",
    "wait_delivery",
]


def shares(total: int, count: int) -> list[int]:
    """``total`` in ``count`` shares as even as possible (the first ones one larger)."""
    return [total // count + (1 if i < total % count else 0) for i in range(count)]


def split(connections: int, per_worker: int, minimum: int) -> list[int]:
    """``connections`` shared by ``max(minimum, ceil(connections / per_worker))`` workers."""
    return shares(connections, max(minimum, math.ceil(connections / per_worker)))


class Workers:
    """Client worker processes (forked), steered over pipes: ``run(config, pipe)`` in each
    (``clients.run_worker`` by default; ``recovery.run_worker`` for recovering clients)."""

    def __init__(
        self, configs: Sequence[Any], run: Callable[[Any, Pipe], None] = run_worker
    ) -> None:
        context = multiprocessing.get_context("fork")
        self.pipes: list[Pipe] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for config in configs:
            ours, theirs = context.Pipe()
            proc = context.Process(target=run, args=(config, theirs), daemon=True)
            proc.start()
            theirs.close()
            self.pipes.append(ours)
            self.procs.append(proc)
        self.ps = [psutil.Process(proc.pid) for proc in self.procs if proc.pid is not None]

    def send(self, command: tuple[Any, ...]) -> None:
        for pipe in self.pipes:
            pipe.send(command)

    def receive(self, name: str, timeout: float) -> list[Any]:
        """Every worker's answer to the command ``name``, within ``timeout`` seconds in all."""
        deadline = time.monotonic() + timeout
        replies = []
        for pipe in self.pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"worker did not answer {name!r} within {timeout}s")
            status, value = pipe.recv()
            if status != "ok":
                raise RuntimeError(f"worker failed {name!r}: {value}")
            replies.append(value)
        return replies

    def call(self, command: tuple[Any, ...], timeout: float) -> list[Any]:
        self.send(command)
        return self.receive(command[0], timeout)

    def frames(self) -> int:
        """Benchmark messages received so far, over all workers."""
        return sum(self.call(("frames",), timeout=10))

    def pids(self) -> list[int]:
        return [int(p.pid) for p in self.procs if p.pid is not None]

    def cpu_s(self) -> float:
        """All workers' user + system seconds from psutil (10 ms clock ticks)."""
        total = 0.0
        for ps in self.ps:
            times = ps.cpu_times()
            total += times.user + times.system
        return total

    def cpu_ns(self) -> int:
        """All workers' nanoseconds on CPU (schedstat)."""
        return sum(cpu_ns_of(pid) for pid in self.pids())

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call(("exit",), timeout=10)
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for pipe in self.pipes:
            pipe.close()


def connect_counts(replies: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """(connected, failed) over the workers' answers to ``connect``."""
    return sum(r["connected"] for r in replies), sum(r["failed"] for r in replies)


def handshake_times(replies: Sequence[dict[str, Any]]) -> list[float]:
    """Every connection's handshake seconds, sorted, from the answers to ``connect``."""
    return sorted(t for r in replies for t in array("d", r["handshake_s"]))


def wait_delivery(
    workers: Workers, expected_total: int, timeout: float, stall: float = 3.0
) -> tuple[int, float]:
    """Poll until the workers received ``expected_total`` frames, or no progress for ``stall``
    seconds, or ``timeout``.  Returns (frames, seconds waited)."""
    started = time.monotonic()
    last, last_change = -1, started
    while True:
        frames = workers.frames()
        now = time.monotonic()
        if frames >= expected_total or now - started > timeout:
            return frames, now - started
        if frames != last:
            last, last_change = frames, now
        elif now - last_change > stall:
            return frames, now - started
        time.sleep(0.02)
