"""The client protocol as a ``Session`` carries it out, without a socket.

Each test feeds a client's messages to a session over a real ``Hub`` whose connections have an
in-memory transport that keeps the frames it is given; the frames are what a client would
read.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from roomcast.connection import Connection, Delivery
from roomcast.frame import Frame
from roomcast.history.positions import HistoryLimits, HistoryRule, history_for_all
from roomcast.hub import Hub
from roomcast.logbudget import EventLog
from roomcast.serve.config import ServerConfig
from roomcast.serve.metrics import ServerCounters
from roomcast.serve.session import Session


class Inbox:
    """A transport that keeps every frame; ``closed`` says how it was closed."""

    def __init__(self, user_id: str) -> None:
        self.connection = Connection(None, user_id)
        self.connection.transport = self
        self.rate_state: tuple[float, float, int] | None = None
        self.frames: list[Frame] = []
        self.closed: tuple[int, str] | None = None
        self.buffered_bytes = 0

    def send(self, frame: Frame) -> Delivery:
        self.frames.append(frame)
        return Delivery.ACCEPTED

    def close(self, code: int, reason: str = "") -> None:
        self.closed = (code, reason)

    def detach(self) -> None:
        pass

    def take(self) -> list[dict[str, Any]]:
        """The messages received since the last take."""
        messages = [json.loads(frame.payload) for frame in self.frames]
        self.frames.clear()
        return messages


def session(
    history: HistoryRule | None = None, **options: Any
) -> tuple[Session, Hub, ServerCounters]:
    """A session over a hub with ``ServerConfig(**options)``'s limits, no presence, no
    tokens (and ``history``, if given)."""
    config = ServerConfig(**options)
    hub, counters = Hub(max_rooms=config.max_rooms, history=history), ServerCounters()
    events = EventLog(logging.getLogger("test.session"))
    carry = Session(
        config, hub, counters, events, lambda: None, None, lambda *_: None, asyncio.ensure_future
    )
    return carry, hub, counters


def client(hub: Hub, user_id: str) -> Inbox:
    inbox = Inbox(user_id)
    hub.attach(inbox.connection)
    return inbox


def say(session: Session, inbox: Inbox, **message: Any) -> list[dict[str, Any]]:
    text = json.dumps(message)
    session.received(inbox, text, len(text))
    return inbox.take()


def test_join_publish_leave_are_acknowledged_and_delivered() -> None:
    """A publish reaches the other members (not the sender) and every command gets its ack."""
    carry, hub, _ = session()
    ann, bob = client(hub, "ann"), client(hub, "bob")
    assert say(carry, ann, type="join", room="r", event_id="j")[0]["ack_event_id"] == "j"
    say(carry, bob, type="join", room="r")
    assert say(carry, ann, type="publish", room="r", data=1, event_id="p")[0]["type"] == "ack"
    (delivered,) = bob.take()
    assert delivered["type"] == "room_message" and delivered["sender"] == "ann"
    assert say(carry, ann, type="leave", room="r")[0]["type"] == "ack"
    assert [c.user_id for c in hub.get_room_members("r")] == ["bob"]


def test_refusals_say_why_with_their_code() -> None:
    """Publishing outside a room, leaving a room one is not in, a reserved room, too many
    rooms and a full server are refused with an error naming the cause."""
    carry, hub, counters = session(max_rooms_per_connection=2, max_rooms=3)
    ann = client(hub, "ann")
    assert "not in room" in say(carry, ann, type="publish", room="x", data=1)[0]["error"]
    assert "not in room" in say(carry, ann, type="leave", room="x")[0]["error"]
    assert "reserved" in say(carry, ann, type="join", room="$secret")[0]["error"]
    say(carry, ann, type="join", room="a")
    say(carry, ann, type="join", room="b")
    assert "at most 2 rooms" in say(carry, ann, type="join", room="c")[0]["error"]
    bob = client(hub, "bob")
    say(carry, bob, type="join", room="c")
    (full,) = say(carry, bob, type="join", room="d")
    assert full["code"] == 1013 and "maximum of 3 rooms" in full["error"]
    assert counters.protocol_errors == 5


def test_a_client_over_the_rate_is_told_once_then_cut_off() -> None:
    """Over the burst, messages are dropped with one error per episode; 50 refusals in a row
    close the client with 1008."""
    carry, hub, counters = session(rate_limit=1, rate_burst=2)
    ann = client(hub, "ann")
    answers = [say(carry, ann, type="ping") for _ in range(3)]
    assert [a[0]["type"] for a in answers] == ["pong", "pong", "error"]
    for _ in range(60):
        say(carry, ann, type="ping")
    assert ann.closed == (1008, "rate limit exceeded")
    assert counters.rate_limited >= 50


def test_bad_json_and_binary_frames() -> None:
    """Bad JSON gets error 1003 and the connection stays; a binary frame closes it 1003."""
    carry, hub, _ = session()
    ann = client(hub, "ann")
    carry.received(ann, "{not json", 9)
    assert ann.take()[0]["code"] == 1003 and ann.closed is None
    carry.received(ann, b"\x00", 1)
    assert ann.closed == (1003, "binary frames are not supported")


def test_auth_without_tokens_is_refused() -> None:
    """A token refresh on a server that takes no tokens is refused, not ignored."""
    carry, hub, _ = session()
    ann = client(hub, "ann")
    assert "does not take tokens" in say(carry, ann, type="auth", token="t")[0]["error"]


def history_session() -> tuple[Session, Hub]:
    carry, hub, _ = session(history=history_for_all(HistoryLimits(size=5, ttl=300)))
    return carry, hub


def test_rooms_with_history_position_messages_acks_and_joins() -> None:
    """Members get offsets and the epoch; the sender's ack carries the position of its
    message (it does not get the message itself); a join is acknowledged with the room's
    position."""
    carry, hub = history_session()
    ann, bob = client(hub, "ann"), client(hub, "bob")
    (ack,) = say(carry, ann, type="join", room="r", event_id="j1")
    assert ack["position"] == {"epoch": "", "offset": 0}
    say(carry, bob, type="join", room="r")
    (ack,) = say(carry, ann, type="publish", room="r", data={"n": 1}, event_id="p1")
    (message,) = bob.take()
    assert message["offset"] == 1 and message["data"] == {"n": 1}
    assert ack == {**ack, "type": "ack", "ack_event_id": "p1"}
    assert ack["position"] == {"epoch": message["epoch"], "offset": 1}
    carol = client(hub, "carol")
    (joined,) = say(carry, carol, type="join", room="r")
    assert joined["position"] == {"epoch": message["epoch"], "offset": 1}
    assert "recovered" not in joined


def test_a_join_since_replays_what_was_missed_before_the_ack() -> None:
    carry, hub = history_session()
    ann, bob = client(hub, "ann"), client(hub, "bob")
    say(carry, ann, type="join", room="r")
    say(carry, bob, type="join", room="r")
    for n in range(1, 4):
        say(carry, ann, type="publish", room="r", data={"n": n})
    epoch = bob.take()[0]["epoch"]
    say(carry, bob, type="leave", room="r")
    for n in range(4, 6):
        say(carry, ann, type="publish", room="r", data={"n": n})
    replies = say(
        carry, bob, type="join", room="r", since={"epoch": epoch, "offset": 3}, event_id="j"
    )
    assert [m.get("offset") for m in replies] == [4, 5, None]
    assert [m["data"] for m in replies[:2]] == [{"n": 4}, {"n": 5}]
    assert replies[2] == {
        **replies[2],
        "type": "ack",
        "recovered": True,
        "replayed": 2,
        "position": {"epoch": epoch, "offset": 5},
    }
    say(carry, ann, type="publish", room="r", data={"n": 6})
    assert [m["offset"] for m in bob.take()] == [6]


def test_a_join_since_too_old_or_of_another_epoch_is_not_recovered() -> None:
    carry, hub = history_session()
    ann, bob = client(hub, "ann"), client(hub, "bob")
    say(carry, ann, type="join", room="r")
    for n in range(8):  # the history keeps 5
        say(carry, ann, type="publish", room="r", data=n)
    for since in ({"epoch": "nope", "offset": 7}, {"epoch": "x", "offset": 1}):
        (ack,) = say(carry, bob, type="join", room="r", since=since)
        assert ack["recovered"] is False and ack["replayed"] == 0
        assert ack["position"]["offset"] == 8
        say(carry, bob, type="leave", room="r")
    (error,) = say(carry, bob, type="join", room="r", since={"offset": 1}, event_id="b")
    assert error["type"] == "error" and "since" in error["error"] and error["ref_event_id"] == "b"


async def test_the_history_command_reads_without_joining() -> None:
    carry, hub = history_session()
    ann, bob = client(hub, "ann"), client(hub, "bob")
    say(carry, ann, type="join", room="r")
    for n in range(1, 4):
        say(carry, ann, type="publish", room="r", data=n)
    say(carry, bob, type="history", room="r", limit=2, event_id="h")
    for _ in range(20):
        await asyncio.sleep(0)
    (page,) = bob.take()
    assert page["type"] == "history" and page["ref_event_id"] == "h"
    assert [m["data"] for m in page["messages"]] == [2, 3]
    assert page["position"]["offset"] == 3 and "recovered" not in page
    epoch = page["position"]["epoch"]
    say(carry, bob, type="history", room="r", since={"epoch": epoch, "offset": 1})
    for _ in range(20):
        await asyncio.sleep(0)
    (page,) = bob.take()
    assert page["recovered"] is True and [m["offset"] for m in page["messages"]] == [2, 3]
    assert "r" not in bob.connection.rooms
    (error,) = say(carry, bob, type="history", room="$stats")
    assert error["type"] == "error"


async def test_messages_behind_a_join_that_waits_for_history_follow_it_in_order() -> None:
    """Over a broker a join of a room with history waits for a read; what the client sent
    after it (a publish to that room, a ping) is carried out after the join's ack, in order,
    instead of being refused ("not in room")."""
    from roomcast.brokers.memory import MemoryBroker, MemoryBus

    config = ServerConfig()
    hub = Hub(MemoryBroker(MemoryBus()), history=history_for_all(HistoryLimits(5, 300)))
    await hub.start()
    events = EventLog(logging.getLogger("test.session"))
    carry = Session(
        config,
        hub,
        ServerCounters(),
        events,
        lambda: None,
        None,
        lambda *_: None,
        asyncio.ensure_future,
    )
    ann = client(hub, "ann")
    since = {"epoch": "", "offset": 0}
    assert say(carry, ann, type="join", room="r", since=since, event_id="j") == []  # (reads)
    assert say(carry, ann, type="publish", room="r", data=1, event_id="p") == []  # (waits)
    assert say(carry, ann, type="ping", event_id="q") == []
    for _ in range(30):
        await asyncio.sleep(0)
    replies = [(m["type"], m.get("ack_event_id") or m.get("ping_event_id")) for m in ann.take()]
    # The join's ack, then the publish (acknowledged once stored, after the ping's pong).
    assert replies == [("ack", "j"), ("pong", "q"), ("ack", "p")]
    await hub.stop()


def test_a_clients_mistakes_are_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    """Bad JSON and a refused command are the client's business: INFO, not WARNING."""
    caplog.set_level(logging.INFO, "test.session")
    carry, hub, _ = session()
    ann = client(hub, "ann")
    text = "{not json"
    carry.received(ann, text, len(text))
    say(carry, ann, type="leave", room="nowhere")
    kinds = {(r.levelname, r.getMessage().split(" ")[0]) for r in caplog.records}
    assert kinds == {("INFO", "bad_message"), ("INFO", "command_refused")}
