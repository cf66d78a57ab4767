"""The API port: 1,100 connections that send nothing, 500 that send a publish request one byte
a second, and one ``POST /api/publish`` declaring a 2 GB body and sending none; ``/healthz`` on
the API port every 0.5 s meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import Counter

from drills.base import API_KEY, ATTACKER, CROWD, PROBE, Case, Run, Serve
from harness.raw_http import HealthProbe, status_of
from harness.report import fmt_counts, log

__all__ = ["drill_api"]


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


def others(outcomes: Counter[str]) -> str:
    """The outcomes other than "open"."""
    return fmt_counts(Counter({k: v for k, v in outcomes.items() if k != "open"}))


async def api_idle(run: Run) -> Case:
    serve = Serve(run, "api-idle")
    tracked: list[Tracked] = []
    try:
        await serve.ready()
        assert serve.api_port is not None
        health = HealthProbe(serve.api_port, source=PROBE)
        tracked, failed = await open_many(serve.api_port, 1100)
        await asyncio.sleep(12)
        outcomes = Counter(t.outcome() for t in tracked)
        return Case(
            "1,100 idle connections (no byte sent)",
            {
                "still open after 12 s": f"{outcomes['open']:,} of {len(tracked):,}",
                "the others": others(outcomes),
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
        health = HealthProbe(serve.api_port, source=PROBE)
        tracked, failed = await open_many(serve.api_port, 500)
        tricklers = [asyncio.create_task(trickle(t)) for t in tracked]
        await asyncio.sleep(15)
        outcomes = Counter(t.outcome() for t in tracked)
        return Case(
            "500 slowloris connections (one header byte a second)",
            {
                "still open after 15 s": f"{outcomes['open']:,} of {len(tracked):,}",
                "the others": others(outcomes),
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
