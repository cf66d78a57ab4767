"""MemoryOutbox: bounded, oldest first, claims that lapse or are released, waits without polling.

Lapses are tested with a fake clock and ``wait=0``; the few real waits are a few hundredths of
a second, each bounded by ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from roomcast.events.memory import MemoryOutbox
from roomcast.events.outbox import Outbox
from roomcast.events.schema import Kind, LifecycleEvent


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def event(n: int) -> LifecycleEvent:
    return LifecycleEvent(kind=Kind.CONNECT, id=f"e{n}", time=1.0, seq=n, user="u")


def ids(batch: list[tuple[str, LifecycleEvent]]) -> list[str]:
    return [e.id for _, e in batch]


def test_is_an_outbox() -> None:
    """MemoryOutbox satisfies the Outbox contract (checked by mypy here)."""
    outbox: Outbox = MemoryOutbox()
    assert outbox.backlog == 0
    assert outbox.dropped == 0


@pytest.mark.parametrize(
    "kwargs", [{"max_events": 0}, {"reclaim_after": 0.0}, {"reclaim_after": -1.0}]
)
def test_refuses_nonsense_arguments(kwargs: dict[str, float]) -> None:
    """A bound below one or a reclaim delay that is not positive is an error."""
    with pytest.raises(ValueError):
        MemoryOutbox(**kwargs)  # type: ignore[arg-type]


async def test_claims_oldest_first_up_to_count() -> None:
    """Entries come out in append order, at most ``count`` per claim."""
    outbox = MemoryOutbox()
    outbox.append([event(1), event(2)])
    outbox.append([event(3)])
    assert ids(await outbox.claim(2, 0)) == ["e1", "e2"]
    assert ids(await outbox.claim(2, 0)) == ["e3"]
    assert await outbox.claim(2, 0) == []
    assert outbox.backlog == 3
    assert outbox.in_flight == 3


async def test_claim_refuses_a_count_below_one() -> None:
    """``count`` must be at least one."""
    with pytest.raises(ValueError):
        await MemoryOutbox().claim(0, 0)


async def test_ack_forgets_and_ignores_unknown_ids() -> None:
    """Acknowledged entries are gone for good; unknown ids are no error."""
    outbox = MemoryOutbox()
    entry_ids = outbox.append([event(1), event(2)])
    batch = await outbox.claim(10, 0)
    assert [entry_id for entry_id, _ in batch] == entry_ids
    await outbox.ack([*entry_ids, "no-such-id"])
    assert outbox.backlog == 0
    assert outbox.in_flight == 0


async def test_a_claim_lapses_after_the_reclaim_delay() -> None:
    """An entry claimed and not acknowledged is handed out again after ``reclaim_after``,
    in its place before newer entries."""
    clock = FakeClock()
    outbox = MemoryOutbox(reclaim_after=30.0, clock=clock)
    outbox.append([event(1)])
    assert ids(await outbox.claim(10, 0)) == ["e1"]
    outbox.append([event(2)])
    clock.now += 29.0
    assert ids(await outbox.claim(10, 0)) == ["e2"]
    clock.now += 1.0
    assert ids(await outbox.claim(10, 0)) == ["e1"]


async def test_release_hands_entries_out_again_at_once_in_order() -> None:
    """Released entries are claimable at once, in their original order."""
    outbox = MemoryOutbox()
    outbox.append([event(1), event(2), event(3)])
    first = await outbox.claim(2, 0)
    await outbox.release([entry_id for entry_id, _ in first])
    assert ids(await outbox.claim(10, 0)) == ["e1", "e2", "e3"]


async def test_release_of_unclaimed_ids_changes_nothing() -> None:
    """Releasing what is not claimed is no error and hands nothing out twice."""
    outbox = MemoryOutbox()
    (entry_id,) = outbox.append([event(1)])
    await outbox.release([entry_id, "no-such-id"])
    assert ids(await outbox.claim(10, 0)) == ["e1"]
    assert await outbox.claim(10, 0) == []


async def test_claim_returns_empty_after_its_wait() -> None:
    """With nothing to hand out, claim returns an empty batch once ``wait`` is over."""
    outbox = MemoryOutbox()
    started = time.monotonic()
    async with asyncio.timeout(5):
        assert await outbox.claim(10, 0.05) == []
    assert time.monotonic() - started >= 0.04


async def test_a_waiting_claim_wakes_on_append() -> None:
    """A claim waiting for entries returns as soon as some are appended."""
    outbox = MemoryOutbox()
    waiting = asyncio.create_task(outbox.claim(10, 60))
    await asyncio.sleep(0)
    assert not waiting.done()
    outbox.append([])  # nothing appended: still waiting
    await asyncio.sleep(0)
    assert not waiting.done()
    outbox.append([event(1)])
    async with asyncio.timeout(5):
        assert ids(await waiting) == ["e1"]


async def test_a_waiting_claim_wakes_on_release() -> None:
    """A claim waiting while everything is claimed returns when an entry is released."""
    outbox = MemoryOutbox()
    outbox.append([event(1)])
    first = await outbox.claim(10, 0)
    waiting = asyncio.create_task(outbox.claim(10, 60))
    await asyncio.sleep(0)
    assert not waiting.done()
    await outbox.release([entry_id for entry_id, _ in first])
    async with asyncio.timeout(5):
        assert ids(await waiting) == ["e1"]


async def test_a_waiting_claim_wakes_when_a_claim_lapses() -> None:
    """A claim waiting while everything is claimed returns when a claim lapses, not later."""
    outbox = MemoryOutbox(reclaim_after=0.05)
    outbox.append([event(1)])
    await outbox.claim(10, 0)
    async with asyncio.timeout(5):
        assert ids(await outbox.claim(10, 60)) == ["e1"]


async def test_overflow_drops_the_oldest_and_counts_them() -> None:
    """Past the bound the oldest entries go (claimed ones too), counted in ``dropped``; an
    ack of a dropped entry is harmless."""
    outbox = MemoryOutbox(max_events=3)
    outbox.append([event(1), event(2)])
    claimed = await outbox.claim(1, 0)
    outbox.append([event(3), event(4), event(5)])
    assert outbox.backlog == 3
    assert outbox.dropped == 2
    assert outbox.in_flight == 0
    assert ids(await outbox.claim(10, 0)) == ["e3", "e4", "e5"]
    await outbox.ack([entry_id for entry_id, _ in claimed])
    assert outbox.backlog == 3
    assert outbox.max_events == 3
