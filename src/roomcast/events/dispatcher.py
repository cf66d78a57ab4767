"""Delivery of lifecycle events to a backend as signed webhooks, retried until acknowledged.

One background task claims a batch from the outbox, POSTs it as one JSON body, and on a 2xx
answer acknowledges it.  Anything else (another status, a timeout, a refused or broken
connection) is retried: the same body under the same delivery id, with a fresh timestamp and
signature each time (a receiver refuses old timestamps, so a retry must not reuse one), after
a jittered exponential backoff, for as long as it takes.  Nothing is given up on: while the
receiver is away, events wait in the outbox, whose bound caps what they take; past it the
oldest are dropped and counted there.

One batch is in flight at a time: that keeps events in outbox order and makes one keep-alive
connection enough.  Delivery is at least once (a 2xx lost on the way back means the batch is
sent again), so receivers deduplicate by event id.

Metrics are plain counters read when scraped (``samples()``, see ``roomcast.events.stats``)
plus a latency histogram of attempts.  Failures are logged within a budget (``EventLog``): a
receiver down for an hour is a few dozen lines, not one traceback per attempt.

This module imports aiohttp (the ``hooks`` extra); ``import roomcast`` does not import it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

import aiohttp

from roomcast import __version__
from roomcast.events import signing
from roomcast.events.outbox import Outbox
from roomcast.events.schema import LifecycleEvent, encode_events
from roomcast.events.stats import DispatcherStats, Failure, LatencyHistogram, Sample, samples
from roomcast.logbudget import EventLog
from roomcast.tasks import TaskSet

__all__ = ["DELIVERY_HEADER", "Dispatcher", "Releasing", "retry_delay"]

logger = logging.getLogger("roomcast.events")

DELIVERY_HEADER = "Roomcast-Delivery"
"""Names one batch; the same on every retry of it, so a receiver's logs can tie them."""

_IDLE_WAIT = 10.0
"""Seconds one claim waits for events; the outbox wakes it as soon as one is appended."""


@runtime_checkable
class Releasing(Protocol):
    """An outbox that can hand claimed entries out again at once (``MemoryOutbox`` can):
    a stopping dispatcher gives its batch back instead of leaving it to the reclaim delay."""

    async def release(self, entry_ids: Sequence[str]) -> None: ...


class _State(enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Dispatcher:
    """Delivers an outbox's events to one webhook URL.

    Args:
        outbox: Where the events wait.
        url: The receiver (http or https).
        secrets: Signing secrets, the current one first; during a rotation the old one too
            (every request then carries one ``v1=`` per secret).
        batch: Most events per request.
        timeout: Seconds an attempt may take, connecting and reading the answer included.
        max_backoff: The longest wait between attempts.
        min_backoff: The first wait; it doubles per failed attempt up to ``max_backoff``, and
            each wait is jittered down by up to half, so instances cut off together do not
            retry together.
        grace: Seconds ``stop()`` lets a request in flight finish before cancelling it.
        draw: Random numbers in [0, 1) for the jitter (a test passes its own).
    """

    def __init__(
        self,
        outbox: Outbox,
        url: str,
        secrets: Sequence[bytes],
        *,
        batch: int = 100,
        timeout: float = 5.0,
        max_backoff: float = 30.0,
        min_backoff: float = 0.5,
        grace: float = 5.0,
        draw: Callable[[], float] = random.random,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the webhook URL must be http(s)://host/...: {url!r}")
        if not secrets or not all(secrets):
            raise ValueError("at least one non-empty signing secret is needed")
        if batch < 1 or timeout <= 0 or grace < 0:
            raise ValueError("batch must be at least 1, timeout positive, grace not negative")
        if not 0 < min_backoff <= max_backoff:
            raise ValueError("backoff needs 0 < min_backoff <= max_backoff")
        self._outbox = outbox
        self._url = url
        # Logs name the host only: a URL's path or query may carry a token.
        self._target = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        self._secrets = tuple(secrets)
        self._batch = batch
        self._timeout = timeout
        self._max_backoff = max_backoff
        self._min_backoff = min_backoff
        self._grace = grace
        self._draw = draw
        self.stats = DispatcherStats()
        self.latency = LatencyHistogram()
        self._log = EventLog(logger)
        self._tasks = TaskSet()
        self._state = _State.IDLE
        # True from the start of a request to the acknowledgement of its answer.
        self._posting = False
        # The entry ids of the batch being delivered (claimed, not yet acknowledged).
        self._in_hand: list[str] = []

    @property
    def running(self) -> bool:
        """Between ``start()`` and ``stop()``."""
        return self._state is _State.RUNNING

    async def start(self) -> None:
        """Start delivering (the task opens its HTTP session).

        Raises:
            RuntimeError: started before (a dispatcher runs once).
        """
        if self._state is not _State.IDLE:
            raise RuntimeError("a Dispatcher is started once")
        self._state = _State.RUNNING
        self._tasks.spawn(self._run(), name="roomcast-webhook-dispatcher")

    async def stop(self) -> None:
        """Stop delivering: a request in flight gets up to ``grace`` seconds to be answered
        (and acknowledged); a wait between retries is cut short.  What is not acknowledged
        stays in the outbox (released at once where the outbox can).  A call while another
        is stopping returns at once."""
        if self._state is _State.IDLE:
            self._state = _State.STOPPED
        if self._state is not _State.RUNNING:  # never started, stopped, or stopping already
            return
        self._state = _State.STOPPING
        if self._posting:
            # The loop sees the state after this request and ends by itself.
            await self._tasks.wait(self._grace)
        await self._tasks.cancel_all()
        if self._in_hand and isinstance(self._outbox, Releasing):
            await self._outbox.release(self._in_hand)
        self._in_hand = []
        self._state = _State.STOPPED

    def samples(self) -> list[Sample]:
        """The dispatcher's and its outbox's metrics, read now (see ``roomcast.events.stats``)."""
        return samples(self.stats, self._outbox)

    def _backoff(self, failures: int) -> float:
        return retry_delay(failures, self._min_backoff, self._max_backoff, self._draw())

    async def _pause(self, failures: int) -> None:
        delay = self._backoff(failures)
        self.stats.backoff = delay
        await asyncio.sleep(delay)

    async def _run(self) -> None:
        # The session lives as long as this task: cancelling the task closes it.
        async with aiohttp.ClientSession(
            # One request at a time (see the module's docstring), kept alive between batches.
            connector=aiohttp.TCPConnector(limit=1),
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            headers={"User-Agent": f"roomcast/{__version__}"},
        ) as session:
            await self._claim_and_deliver(session)

    async def _claim_and_deliver(self, session: aiohttp.ClientSession) -> None:
        outbox_failures = 0
        while self._state is _State.RUNNING:
            try:
                entries = await self._outbox.claim(self._batch, _IDLE_WAIT)
            except Exception as exc:  # the outbox's own trouble: it is retried like the rest
                self.stats.outbox_errors += 1
                outbox_failures += 1
                self._log.event("outbox claim failed", "%s", _describe(exc))
                await self._pause(outbox_failures)
                continue
            outbox_failures = 0
            if entries:
                await self._deliver(session, entries)

    async def _deliver(
        self, session: aiohttp.ClientSession, entries: list[tuple[str, LifecycleEvent]]
    ) -> None:
        """Send one batch until it is acknowledged or the dispatcher stops."""
        ids = [entry_id for entry_id, _ in entries]
        self._in_hand = ids
        body = encode_events([event for _, event in entries])
        delivery = uuid.uuid4().hex
        failures = 0
        while True:
            self._posting = True
            try:
                failure, detail = await self._attempt(session, body, delivery)
                if failure is None:
                    await self._acknowledge(ids, delivery, failures)
            finally:
                self._posting = False
            if failure is None:
                self._in_hand = []
                return
            failures += 1
            if self._state is not _State.RUNNING:
                return
            delay = self._backoff(failures)
            self._log.event(
                f"webhook {failure}",
                "delivery %s of %d event(s) to %s: %s; attempt %d, next in %.1f s",
                delivery,
                len(ids),
                self._target,
                detail,
                failures,
                delay,
            )
            self.stats.backoff = delay
            await asyncio.sleep(delay)

    async def _attempt(
        self, session: aiohttp.ClientSession, body: bytes, delivery: str
    ) -> tuple[Failure | None, str]:
        """One POST of ``body``; returns why it failed (None: acknowledged) and a detail."""
        headers = {
            "Content-Type": "application/json",
            signing.HEADER: signing.signature_header(self._secrets, body),
            DELIVERY_HEADER: delivery,
        }
        self.stats.attempts += 1
        started = time.perf_counter()
        try:
            async with session.post(self._url, data=body, headers=headers) as response:
                # Read the answer through so the connection goes back to the pool.
                await response.read()
                status = response.status
        except TimeoutError:  # before ClientError: aiohttp's timeouts are both
            self.latency.observe(time.perf_counter() - started)
            self.stats.timeouts += 1
            return Failure.TIMEOUT, f"no answer within {self._timeout:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            self.latency.observe(time.perf_counter() - started)
            self.stats.connection_failures += 1
            return Failure.CONNECTION, _describe(exc)
        self.latency.observe(time.perf_counter() - started)
        self.stats.last_status = status
        if not 200 <= status < 300:
            self.stats.status_failures += 1
            return Failure.STATUS, f"answered {status}"
        return None, ""

    async def _acknowledge(self, ids: list[str], delivery: str, failures: int) -> None:
        self.stats.events_delivered += len(ids)
        self.stats.batches_delivered += 1
        self.stats.backoff = 0.0
        if failures:
            logger.info(
                "webhook delivery %s to %s acknowledged after %d failed attempt(s)",
                delivery,
                self._target,
                failures,
            )
        try:
            await self._outbox.ack(ids)
        except Exception as exc:  # delivered all the same; the outbox will hand them out again
            self.stats.outbox_errors += 1
            self._log.event("outbox ack failed", "%s", _describe(exc))


def retry_delay(failures: int, minimum: float, maximum: float, draw: float) -> float:
    """Seconds to wait after ``failures`` consecutive failures (1, 2, ...): ``minimum``
    doubled per failure up to ``maximum``, less up to half of it by ``draw`` in [0, 1)."""
    # A capped exponent: 2**64 times any minimum is past any maximum, and cannot overflow.
    nominal = min(maximum, minimum * 2.0 ** min(failures - 1, 64))
    return nominal * (1.0 - 0.5 * draw)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
