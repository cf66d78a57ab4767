"""Frame floods: a text frame with FIN=0 and then 40,000 (and 100,000) empty continuation
frames in one write, and 100,000 pings, from one client, while a neighbour pings (JSON) every
50 ms and ``/healthz`` is asked every 0.5 s."""

from __future__ import annotations

import asyncio
import contextlib
import time

from drills.base import ATTACKER, NEIGHBOUR, PROBE, Case, Run, Serve
from harness.raw_http import HealthProbe
from harness.raw_ws import (
    CONTINUATION,
    PING,
    TEXT,
    WsClient,
    abort_all,
    client_frame,
    connect,
    text_frame,
)
from harness.report import log

__all__ = ["drill_frames"]

CAP = 30.0
"""Longest a flood measurement runs; a stall beyond it is reported as "> 30 s"."""
PING_FRAME = text_frame({"type": "ping"})


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
        neighbour = await connect(
            serve.port, "/ws?user_id=neighbour", source=NEIGHBOUR, on_text=pinger.on_text
        )
        attacker = await connect(serve.port, "/ws?user_id=attacker", source=ATTACKER)
        clients += [neighbour, attacker]
        health = HealthProbe(serve.port, source=PROBE)
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
