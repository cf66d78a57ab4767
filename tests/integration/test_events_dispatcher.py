"""The webhook dispatcher against a real receiver (aiohttp.web on loopback) that verifies
signatures and misbehaves on demand: down, 500s, hanging, another secret.

Times are in ``seconds(units)`` (tests.support): the drill's 30 s outage is 3 units here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence

import pytest

from roomcast.events.dispatcher import DELIVERY_HEADER, Dispatcher, retry_delay
from roomcast.events.memory import MemoryOutbox
from roomcast.events.outbox import Outbox
from roomcast.events.schema import Kind, LifecycleEvent
from roomcast.events.signing import HEADER, SignatureError, verify
from tests.support import eventually, seconds
from tests.webhook_receiver import Mode, Receiver

SECRET = b"whsec-current"
OLD_SECRET = b"whsec-previous"


def make_events(start: int, count: int) -> list[LifecycleEvent]:
    return [
        LifecycleEvent(Kind.JOIN, f"e{n}", 1765000000.0 + n, n, user="ann", room="lobby")
        for n in range(start, start + count)
    ]


def names(start: int, stop: int) -> list[str]:
    return [f"e{n}" for n in range(start, stop)]


def fast(
    outbox: Outbox,
    url: str,
    secrets: Sequence[bytes] = (SECRET,),
    *,
    batch: int = 100,
    timeout: float | None = None,
    min_backoff: float = 0.05,
    max_backoff: float = 0.2,
    grace: float = 5.0,
) -> Dispatcher:
    """A dispatcher with short waits, so that retries happen within a test's time."""
    return Dispatcher(
        outbox,
        url,
        secrets,
        batch=batch,
        timeout=seconds(2) if timeout is None else timeout,
        min_backoff=min_backoff,
        max_backoff=max_backoff,
        grace=grace,
    )


def metrics(dispatcher: Dispatcher) -> dict[str, float]:
    """The dispatcher's samples by name, as /metrics would show them."""
    return {name: value for _, name, _, value in dispatcher.samples()}


@contextlib.asynccontextmanager
async def running(dispatcher: Dispatcher) -> AsyncIterator[Dispatcher]:
    await dispatcher.start()
    try:
        yield dispatcher
    finally:
        async with asyncio.timeout(seconds(10)):
            await dispatcher.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver(SECRET)
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


async def test_events_arrive_in_order_signed_and_once(receiver: Receiver) -> None:
    """One dispatcher delivers every event once, in outbox order, in signed JSON batches."""
    outbox = MemoryOutbox()
    outbox.append(make_events(0, 120))
    dispatcher = fast(outbox, receiver.url, batch=50)
    async with running(dispatcher):
        for start in range(120, 250, 10):
            outbox.append(make_events(start, 10))
            await asyncio.sleep(0)
        await receiver.wait_until(lambda: len(receiver.events) >= 250, seconds(10))
    assert [event.id for event in receiver.events] == names(0, 250)
    assert outbox.backlog == 0
    stats = dispatcher.stats
    assert stats.events_delivered == 250
    assert stats.batches_delivered == stats.attempts == len(receiver.requests) >= 5
    assert (stats.timeouts, stats.connection_failures, stats.status_failures) == (0, 0, 0)
    assert stats.last_status == 204
    assert dispatcher.latency.count == stats.attempts
    headers = receiver.requests[0].headers
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("roomcast/")
    assert len(headers[DELIVERY_HEADER]) == 32
    assert len({r.headers[DELIVERY_HEADER] for r in receiver.requests}) == len(receiver.requests)
    assert not receiver.rejected


async def test_a_captured_delivery_cannot_be_altered_or_replayed(receiver: Receiver) -> None:
    """The documented check refuses a delivered body once tampered with, its header once old,
    and both under another secret."""
    outbox = MemoryOutbox()
    outbox.append(make_events(0, 3))
    async with running(fast(outbox, receiver.url)):
        await receiver.wait_until(lambda: len(receiver.events) >= 3)
    request = receiver.requests[0]
    header = request.headers[HEADER]
    stamp = verify(SECRET, request.body, header)
    assert abs(stamp - time.time()) < 60
    with pytest.raises(SignatureError):
        verify(SECRET, request.body.replace(b"lobby", b"lobbY"), header)
    with pytest.raises(SignatureError):
        verify(SECRET, request.body, header, now=stamp + 301)
    with pytest.raises(SignatureError):
        verify(OLD_SECRET, request.body, header)


async def test_receiver_down_for_a_while_then_back(receiver: Receiver) -> None:
    """The drill, scaled: the receiver is gone for 3 units while events keep coming; they wait
    in the bounded outbox (its backlog in the metrics), are retried, and all arrive once
    deduplicated by id, in order."""
    outbox = MemoryOutbox(max_events=1000)
    dispatcher = fast(outbox, receiver.url, batch=20, max_backoff=0.5, timeout=seconds(1))
    async with running(dispatcher):
        outbox.append(make_events(0, 20))
        await receiver.wait_until(lambda: len(receiver.unique_ids()) >= 20)
        await receiver.stop()
        produced = 20
        outage_ends = time.monotonic() + seconds(3)
        while time.monotonic() < outage_ends:
            outbox.append(make_events(produced, 5))
            produced += 5
            await asyncio.sleep(seconds(0.1))
        shown = metrics(dispatcher)
        assert 0 < shown["roomcast_events_backlog"] == outbox.backlog <= 1000
        assert shown["roomcast_webhook_connection_failures"] >= 2
        assert shown["roomcast_webhook_backoff_seconds"] > 0
        await receiver.start()
        await receiver.wait_until(lambda: len(receiver.unique_ids()) >= produced, seconds(10))
    assert receiver.unique_ids() == names(0, produced)
    assert outbox.backlog == outbox.dropped == 0
    assert dispatcher.stats.backoff == 0.0


async def test_500s_then_ok(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    """500 answers are retried (same batch, same delivery id) until a 2xx; each failure is a
    log line within budget, never a traceback."""
    caplog.set_level(logging.INFO, logger="roomcast.events")
    receiver.set_mode(Mode.FAIL)
    outbox = MemoryOutbox()
    outbox.append(make_events(0, 5))
    dispatcher = fast(outbox, receiver.url)
    async with running(dispatcher):
        await receiver.wait_until(lambda: len(receiver.requests) >= 3)
        receiver.set_mode(Mode.OK)
        await receiver.wait_until(lambda: len(receiver.events) >= 5)
    assert [event.id for event in receiver.events] == names(0, 5)
    assert len({r.headers[DELIVERY_HEADER] for r in receiver.requests}) == 1
    stats = dispatcher.stats
    assert stats.status_failures >= 2
    assert stats.last_status == 204
    assert stats.backoff == 0.0
    failures = [r for r in caplog.records if "webhook status" in r.getMessage()]
    assert len(failures) == stats.status_failures
    assert "answered 500" in failures[0].getMessage()
    assert all(r.exc_info is None for r in caplog.records)
    assert any("acknowledged after" in r.getMessage() for r in caplog.records)


async def test_a_hanging_receiver_times_out_and_is_retried(receiver: Receiver) -> None:
    """No answer within the timeout counts as a timeout, and the batch is sent again."""
    receiver.set_mode(Mode.HANG)
    outbox = MemoryOutbox()
    outbox.append(make_events(0, 3))
    dispatcher = fast(outbox, receiver.url, timeout=seconds(0.3))
    async with running(dispatcher):
        await receiver.wait_until(lambda: len(receiver.requests) >= 2)
        receiver.set_mode(Mode.OK)
        await receiver.wait_until(lambda: len(receiver.events) >= 3)
    assert dispatcher.stats.timeouts >= 1
    assert receiver.unique_ids() == names(0, 3)


async def test_another_secret_is_refused_and_a_rotation_passes(receiver: Receiver) -> None:
    """A receiver that holds only the old secret refuses requests signed with the new one
    alone, and accepts them while both sign (the rotation)."""
    receiver.secret = OLD_SECRET
    outbox = MemoryOutbox()
    outbox.append(make_events(0, 2))
    refused = fast(outbox, receiver.url, [SECRET])
    async with running(refused):
        await receiver.wait_until(lambda: len(receiver.rejected) >= 2)
    assert not receiver.events
    assert "does not match" in receiver.rejected[0]
    assert refused.stats.last_status == 401
    async with running(fast(outbox, receiver.url, [SECRET, OLD_SECRET])):
        await receiver.wait_until(lambda: len(receiver.events) >= 2)
    assert receiver.unique_ids() == names(0, 2)


async def test_overflow_drops_the_oldest_and_counts(receiver: Receiver) -> None:
    """Past the outbox's bound the oldest events are dropped, counted, and never sent."""
    outbox = MemoryOutbox(max_events=10)
    outbox.append(make_events(0, 25))
    dispatcher = fast(outbox, receiver.url)
    assert metrics(dispatcher)["roomcast_events_dropped"] == 15
    async with running(dispatcher):
        await receiver.wait_until(lambda: len(receiver.events) >= 10)
    assert receiver.unique_ids() == names(15, 25)
    assert (outbox.backlog, outbox.dropped) == (0, 15)


async def test_a_batch_in_hand_is_delivered_even_if_the_outbox_dropped_it(
    receiver: Receiver,
) -> None:
    """The batch being retried is in the dispatcher's hands: overflow behind it drops it from
    the outbox but not from the delivery."""
    receiver.set_mode(Mode.FAIL)
    outbox = MemoryOutbox(max_events=10)
    outbox.append(make_events(0, 5))
    async with running(fast(outbox, receiver.url)):
        await receiver.wait_until(lambda: len(receiver.requests) >= 1)
        outbox.append(make_events(5, 20))
        receiver.set_mode(Mode.OK)
        await receiver.wait_until(lambda: len(receiver.unique_ids()) >= 15)
    assert receiver.unique_ids() == names(0, 5) + names(15, 25)
    assert outbox.dropped == 15


async def test_stop_during_a_retry_returns_promptly_and_keeps_the_batch(
    receiver: Receiver,
) -> None:
    """stop() cuts a wait between retries short; the batch goes back to the outbox, where the
    next dispatcher finds it."""
    receiver.set_mode(Mode.FAIL)
    outbox = MemoryOutbox()
    outbox.append(make_events(0, 3))
    dispatcher = fast(outbox, receiver.url, min_backoff=seconds(30), max_backoff=seconds(30))
    await dispatcher.start()
    await eventually(lambda: dispatcher.stats.backoff > 0, what="backing off")
    started = time.monotonic()
    async with asyncio.timeout(seconds(5)):
        await dispatcher.stop()
    assert time.monotonic() - started < seconds(0.5)
    assert not dispatcher.running
    assert (outbox.backlog, outbox.in_flight) == (3, 0)
    receiver.set_mode(Mode.OK)
    async with running(fast(outbox, receiver.url)):
        await receiver.wait_until(lambda: len(receiver.events) >= 3)
    assert receiver.unique_ids() == names(0, 3)


async def test_stop_lets_a_request_in_flight_finish(receiver: Receiver) -> None:
    """A request answered within the grace period is acknowledged before stop() returns."""
    receiver.delay = seconds(0.3)
    outbox = MemoryOutbox()
    outbox.append(make_events(0, 2))
    dispatcher = fast(outbox, receiver.url, grace=seconds(5))
    await dispatcher.start()
    await receiver.wait_until(lambda: len(receiver.requests) >= 1)
    async with asyncio.timeout(seconds(5)):
        await dispatcher.stop()
    assert outbox.backlog == 0
    assert dispatcher.stats.events_delivered == 2


async def test_stop_cancels_a_request_past_the_grace_period(receiver: Receiver) -> None:
    """A request still unanswered after the grace period is cancelled; its batch stays."""
    receiver.set_mode(Mode.HANG)
    outbox = MemoryOutbox()
    outbox.append(make_events(0, 2))
    dispatcher = fast(outbox, receiver.url, grace=seconds(0.2), timeout=seconds(30))
    await dispatcher.start()
    await receiver.wait_until(lambda: len(receiver.requests) >= 1)
    started = time.monotonic()
    async with asyncio.timeout(seconds(5)):
        await dispatcher.stop()
    assert time.monotonic() - started < seconds(2)
    assert (outbox.backlog, outbox.in_flight) == (2, 0)
    assert dispatcher.stats.events_delivered == 0


class FlakyOutbox:
    """A MemoryOutbox whose first claim fails, second claim finds nothing (as after a wait
    that ran out), and first ack fails, as a remote outbox's may."""

    def __init__(self, inner: MemoryOutbox) -> None:
        self.inner = inner
        self.claims = 0
        self.ack_fails = 1

    async def claim(self, count: int, wait: float) -> list[tuple[str, LifecycleEvent]]:
        self.claims += 1
        if self.claims == 1:
            raise ConnectionError("outbox unreachable")
        if self.claims == 2:
            return []
        return await self.inner.claim(count, wait)

    async def ack(self, entry_ids: Sequence[str]) -> None:
        if self.ack_fails:
            self.ack_fails -= 1
            raise ConnectionError("outbox unreachable")
        await self.inner.ack(entry_ids)

    @property
    def backlog(self) -> int:
        return self.inner.backlog

    @property
    def dropped(self) -> int:
        return self.inner.dropped


async def test_outbox_failures_are_retried(receiver: Receiver) -> None:
    """A failed claim is retried after a backoff, an empty one at once; a failed ack leaves
    the batch to be reclaimed and delivered again: a duplicate by id, never a loss."""
    inner = MemoryOutbox(reclaim_after=seconds(0.2))
    inner.append(make_events(0, 4))
    dispatcher = fast(FlakyOutbox(inner), receiver.url)
    async with running(dispatcher):
        await receiver.wait_until(lambda: len(receiver.events) >= 8)
        await eventually(lambda: inner.backlog == 0, what="acknowledged")
    assert [event.id for event in receiver.events] == names(0, 4) * 2
    assert dispatcher.stats.outbox_errors == 2


async def test_a_dispatcher_runs_once() -> None:
    """start() twice is an error; stop() before start() or twice does nothing."""
    unused = Dispatcher(MemoryOutbox(), "http://127.0.0.1:9/hooks", [SECRET])
    await unused.stop()
    with pytest.raises(RuntimeError):
        await unused.start()
    dispatcher = Dispatcher(MemoryOutbox(), "https://hooks.example/in", [SECRET])
    await dispatcher.start()
    assert dispatcher.running
    with pytest.raises(RuntimeError):
        await dispatcher.start()
    async with asyncio.timeout(seconds(5)):
        await dispatcher.stop()
        await dispatcher.stop()
    assert not dispatcher.running


def test_retry_delays_double_up_to_the_maximum_jittered_down_by_half() -> None:
    """0.5 s doubling to the maximum; the jitter takes up to half of each wait away."""
    delays = [retry_delay(n, 0.5, 30.0, 0.0) for n in range(1, 10)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert retry_delay(3, 0.5, 30.0, 0.5) == 1.5
    assert retry_delay(10_000, 0.5, 30.0, 0.999) == pytest.approx(15.0, abs=0.1)


@pytest.mark.parametrize(
    ("url", "secrets", "options"),
    [
        ("ftp://hooks.example/in", [SECRET], {}),
        ("http:///in", [SECRET], {}),
        ("http://hooks.example/in", [], {}),
        ("http://hooks.example/in", [b""], {}),
        ("http://hooks.example/in", [SECRET], {"batch": 0}),
        ("http://hooks.example/in", [SECRET], {"timeout": 0.0}),
        ("http://hooks.example/in", [SECRET], {"grace": -1.0}),
        ("http://hooks.example/in", [SECRET], {"min_backoff": 0.0}),
        ("http://hooks.example/in", [SECRET], {"min_backoff": 2.0, "max_backoff": 1.0}),
    ],
)
def test_refuses_nonsense_arguments(
    url: str, secrets: list[bytes], options: dict[str, float]
) -> None:
    """A URL that is not http(s) with a host, no secret, or impossible numbers: ValueError."""
    with pytest.raises(ValueError):
        Dispatcher(MemoryOutbox(), url, secrets, **options)  # type: ignore[arg-type]
