"""History over a broker, with two hubs on one in-process bus: ordered delivery on the way
back, holes repaired from the stored history, joins caught up with the live stream, publish
acks in the room's order.  (The same engine over Redis: tests/integration/test_history.py.)"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

import pytest

from roomcast.brokers.memory import MemoryBroker, MemoryBus
from roomcast.connection import Connection, Delivery
from roomcast.frame import Frame, encode
from roomcast.history import joins
from roomcast.history.contract import Joined
from roomcast.history.positions import HistoryLimits, Position, history_for_all
from roomcast.hub import Hub

RULE = history_for_all(HistoryLimits(size=50, ttl=300))


class Inbox:
    def __init__(self, user_id: str) -> None:
        self.connection = Connection(None, user_id)
        self.connection.transport = self
        self.frames: list[Frame] = []
        self.buffered_bytes = 0

    def send(self, frame: Frame) -> Delivery:
        self.frames.append(frame)
        return Delivery.ACCEPTED

    def close(self, code: int, reason: str = "") -> None:
        pass

    def detach(self) -> None:
        pass

    def offsets(self) -> list[int]:
        return [json.loads(frame.payload)["offset"] for frame in self.frames]


async def hubs(count: int = 2) -> tuple[MemoryBus, list[Hub]]:
    bus = MemoryBus()
    made = [Hub(MemoryBroker(bus), history=RULE) for _ in range(count)]
    for hub in made:
        await hub.start()
    return bus, made


def member(hub: Hub, user: str, room: str = "r") -> Inbox:
    inbox = Inbox(user)
    hub.attach(inbox.connection)
    hub.join(inbox.connection, room)
    return inbox


async def settle(rounds: int = 30) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def message(n: int) -> Frame:
    return encode({"type": "room_message", "room": "r", "data": n})


async def joined(hub: Hub, inbox: Inbox, since: Position | None, room: str = "r") -> Joined:
    result: asyncio.Future[Joined] = asyncio.get_running_loop().create_future()
    hub.join_at(inbox.connection, room, since, result.set_result)
    return await asyncio.wait_for(result, 5)


async def test_every_member_everywhere_gets_the_room_in_one_order_and_the_sender_its_ack() -> None:
    _, (one, two) = await hubs()
    ann, bob, cid = member(one, "ann"), member(two, "bob"), member(two, "cid")
    acks: list[Position | None] = []
    for n in range(1, 6):
        sender = ann if n % 2 else bob
        hub = one if n % 2 else two
        hub.publish("r", message(n), sender=sender.connection, done=lambda p, _: acks.append(p))
    await settle()
    assert sorted(p.offset for p in acks if p is not None) == [1, 2, 3, 4, 5]
    assert ann.offsets() == [2, 4] and bob.offsets() == [1, 3, 5]  # (not their own)
    assert cid.offsets() == [1, 2, 3, 4, 5]
    assert {json.loads(f.payload)["epoch"] for f in cid.frames} == {acks[0].epoch}  # type: ignore[union-attr]
    await one.stop()
    await two.stop()


async def test_a_join_since_catches_up_with_publishes_racing_the_read() -> None:
    _, (one, two) = await hubs()
    ann = member(one, "ann")
    for n in range(1, 4):
        one.publish("r", message(n), sender=ann.connection)
    await settle()
    late = Inbox("late")
    two.attach(late.connection)
    result: asyncio.Future[Joined] = asyncio.get_running_loop().create_future()
    two.join_at(late.connection, "r", Position("", 0), result.set_result)
    for n in range(4, 40):  # published while the history is read and after
        one.publish("r", message(n), sender=ann.connection)
        await asyncio.sleep(0)
    done = await asyncio.wait_for(result, 5)
    await settle()
    assert done.recovered and done.failure is None
    assert late.offsets() == list(range(1, 40))  # every one, once, in order
    await one.stop()
    await two.stop()


async def test_a_message_lost_on_the_way_is_read_back_from_the_history() -> None:
    bus, (one, two) = await hubs()
    ann, bob = member(one, "ann"), member(two, "bob")
    channel = one.broker.channels.room("r")  # type: ignore[union-attr]
    broker_two = two.broker
    assert isinstance(broker_two, MemoryBroker)
    one.publish("r", message(1), sender=ann.connection)
    await settle()
    bus.unsubscribe(broker_two, channel)  # offset 2 never reaches instance two
    one.publish("r", message(2), sender=ann.connection)
    await settle()
    bus.subscribe(broker_two, channel)
    one.publish("r", message(3), sender=ann.connection)
    await settle()
    assert bob.offsets() == [1, 2, 3]
    assert broker_two.stats.repaired == 1 and broker_two.stats.missed == 0
    await one.stop()
    await two.stop()


async def test_a_storm_of_joins_rides_one_read_and_each_is_answered() -> None:
    _, (one, two) = await hubs()
    ann = member(one, "ann")
    one.publish("r", message(1), sender=ann.connection)
    await settle()
    crowd = [Inbox(f"u{n}") for n in range(20)]
    answers: list[Joined] = []
    for inbox in crowd:
        two.attach(inbox.connection)
        two.join_at(inbox.connection, "r", None, answers.append)
    await settle()
    assert len(answers) == 20 and {a.position for a in answers} == {answers[0].position}
    assert answers[0].position is not None and answers[0].position.offset == 1
    assert all("r" in inbox.connection.rooms for inbox in crowd)
    await one.stop()
    await two.stop()


async def test_a_connection_gone_during_its_join_is_forgotten_and_the_room_let_go() -> None:
    _, (one, two) = await hubs()
    member(one, "ann")
    ghost = Inbox("ghost")
    two.attach(ghost.connection)
    answers: list[Joined] = []
    two.join_at(ghost.connection, "r", Position("", 0), answers.append)
    assert two.joining(ghost.connection) == 1
    two.forget(ghost.connection)
    await settle()
    assert answers == [] and two.joining(ghost.connection) == 0
    broker = two.broker
    assert isinstance(broker, MemoryBroker)
    assert broker.channels.room("r") not in broker.inbound.subscribed()  # let go of the room
    await one.stop()
    await two.stop()


async def test_a_publish_the_broker_cannot_take_fails_with_a_reason() -> None:
    _, (one,) = await hubs(1)
    ann = member(one, "ann")
    await one.broker.close()  # type: ignore[union-attr]
    outcome: list[Any] = []
    one.publish("r", message(1), sender=ann.connection, done=lambda p, why: outcome.append(why))
    await settle()
    assert outcome and outcome[0] is not None and "could not be stored" in outcome[0]
    await one.stop()


async def test_history_reads_come_back_positioned() -> None:
    _, (one, two) = await hubs()
    ann = member(one, "ann")
    for n in range(1, 5):
        one.publish("r", message(n), sender=ann.connection)
    await settle()
    page = await two.read_history("r", None, 2)
    assert [json.loads(p)["offset"] for p in page.payloads] == [3, 4]
    since = await two.read_history("r", Position(page.position.epoch, 1), 10)
    assert since.recovered and [json.loads(p)["data"] for p in since.payloads] == [2, 3, 4]
    await one.stop()
    await two.stop()


class CountingBroker(MemoryBroker):
    """A memory broker that counts history reads."""

    reads = 0

    async def read_history(
        self, room: str, since: Position | None, limit: int, limits: HistoryLimits
    ) -> Any:
        CountingBroker.reads += 1
        return await super().read_history(room, since, limit, limits)


async def test_a_storm_of_rejoins_with_since_shares_its_reads() -> None:
    """Clients coming back at once, each with its own position, are served by one read (the
    one that covers the oldest position), each getting exactly what it missed."""
    bus = MemoryBus()
    one = Hub(MemoryBroker(bus), history=RULE)
    two = Hub(CountingBroker(bus), history=RULE)
    for hub in (one, two):
        await hub.start()
    ann = member(one, "ann")
    for n in range(1, 11):
        one.publish("r", message(n), sender=ann.connection)
    await settle()
    epoch = (await two.read_history("r", None, 1)).position.epoch
    CountingBroker.reads = 0
    crowd = [Inbox(f"u{n}") for n in range(30)]
    answers: dict[int, Joined] = {}
    for n, inbox in enumerate(crowd):
        two.attach(inbox.connection)
        since = Position(epoch, n % 5 + 2)  # positions 2..6
        two.join_at(inbox.connection, "r", since, functools.partial(answers.__setitem__, n))
    await settle()
    assert len(answers) == 30 and CountingBroker.reads == 1
    for n, inbox in enumerate(crowd):
        assert answers[n].recovered and answers[n].replayed == 10 - (n % 5 + 2)
        assert inbox.offsets() == list(range(n % 5 + 3, 11))
    await one.stop()
    await two.stop()


async def test_joins_waiting_for_history_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond the process's bound, a join that would wait for a history read is refused
    (the client retries); once the waiting ones are in, joins are taken again."""
    monkeypatch.setattr(joins, "MAX_WAITING_JOINS", 2)
    _, (one, two) = await hubs()
    ann = member(one, "ann")
    one.publish("r", message(1), sender=ann.connection)
    await settle()
    answers: list[Joined] = []
    crowd = [Inbox(f"u{n}") for n in range(4)]
    for inbox in crowd[:3]:
        two.attach(inbox.connection)
        two.join_at(inbox.connection, "r", Position("", 0), answers.append)
    assert [a.failure for a in answers] == ["too many joins waiting for history; retry"]
    await settle()
    assert [a.failure for a in answers[1:]] == [None, None]
    two.attach(crowd[3].connection)
    two.join_at(crowd[3].connection, "r", Position("", 0), answers.append)
    await settle()
    assert answers[-1].failure is None and answers[-1].recovered
    await one.stop()
    await two.stop()


async def test_stopping_a_hub_ends_a_replay_in_parts() -> None:
    """Without a broker, a join whose replay waits for the client to read is a task of the
    hub's history: stop() cancels it (the join never completes)."""
    hub = Hub(history=RULE, send_buffer_limit=4096)
    ann = member(hub, "ann")
    for _ in range(20):
        hub.publish("r", encode({"type": "room_message", "room": "r", "data": "x" * 300}))
    slow = Inbox("slow")
    slow.buffered_bytes = 4000  # it reads nothing: the replay waits for room
    hub.attach(slow.connection)
    answers: list[Joined] = []
    hub.join_at(slow.connection, "r", Position("", 0), answers.append)
    await settle()
    assert hub.joining(slow.connection) == 1 and answers == []
    async with asyncio.timeout(5):
        await hub.stop()
    assert hub.joining(slow.connection) == 0 and answers == []
    assert ann.offsets() == list(range(1, 21))
