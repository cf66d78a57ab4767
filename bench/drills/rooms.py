"""Rooms and memory: 2,000 anonymous clients each send 100 joins at once, every room
distinct, names of 64 four-byte characters and, on a fresh server, of 256; first one client
joins ``nul\\x00room``; server RSS before, connected, at the peak and after all left."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import Counter

import psutil

from drills.base import CROWD, PROBE, Case, Run, Serve, wait_for_metric
from harness.raw_ws import WsClient, abort_all, connect, connect_many, text_frame
from harness.report import fmt_counts, fmt_mb, log

__all__ = ["drill_rooms"]


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
        probe = await connect(serve.port, "/ws", source=PROBE, on_text=nul.on_text)
        clients.append(probe)
        probe.send(text_frame({"type": "join", "room": "nul\x00room"}))
        clients += await connect_many(serve.port, ["/ws"] * 2000, CROWD, replies.on_text)
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
        nul_answer = "no answer" if not nul.kinds else fmt_counts(nul.kinds)
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
                    f"{fmt_mb(before)} / {fmt_mb(connected)} / {fmt_mb(peak)} / {fmt_mb(after)}"
                ),
                "kept after all left (RSS after - before)": f"{fmt_mb(after - before)}"
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
