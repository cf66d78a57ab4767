"""HTTP/1.1 by hand, on asyncio: one request per connection from a chosen source address, the
status line of an answer, and a ``/healthz`` prober.

Written out rather than taken from an HTTP client library so that a drill controls every byte
and every timeout, and sees an answer (or its absence) exactly as the server sent it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import Sequence

from harness.report import fmt_counts

__all__ = ["HealthProbe", "health_check", "request", "status_of"]


def status_of(head: bytes) -> int:
    """The status code of an answer's head (``HTTP/1.1 503 ...``).

    Raises:
        ValueError: ``head`` is not an HTTP answer.
    """
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise ValueError(f"not an HTTP answer: {head[:40]!r}")
    return int(parts[1])


async def request(
    port: int,
    method: str,
    path: str,
    *,
    source: str,
    body: bytes = b"",
    headers: Sequence[str] = (),
    limit: float = 1.0,
) -> tuple[int, bytes]:
    """One HTTP/1.1 request to 127.0.0.1:``port`` on its own connection from ``source``,
    within ``limit`` seconds: (status, body)."""
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


class HealthProbe:
    """GET /healthz every 0.5 s, 1 s timeout each, until stopped (200 s at most); counts
    failures by kind.  Starts probing when created (in a running event loop)."""

    def __init__(self, port: int, *, source: str) -> None:
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
                status, _ = await request(self.port, "GET", "/healthz", source=self.source)
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
            text += f" ({fmt_counts(self.failures)}; the last at +{self.last_failure:.1f} s)"
        return text


async def health_check(port: int, *, source: str) -> str:
    """One GET /healthz (1 s timeout): "answered 200" (or another status), or how it
    failed."""
    try:
        status, _ = await request(port, "GET", "/healthz", source=source)
    except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
        return f"failed ({type(exc).__name__})"
    return "answered 200" if status == 200 else f"answered {status}"
