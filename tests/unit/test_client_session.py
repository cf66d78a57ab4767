"""The client's protocol core without a socket: frames in, outcomes out, positions kept."""

from __future__ import annotations

import json
from typing import Any

import pytest

from roomcast.client import (
    History,
    Joined,
    Message,
    Position,
    Rejoined,
    RequestRefused,
    ServerMessage,
)
from roomcast.client.rooms import RoomBook
from roomcast.client.session import ClientSession, Reply, Settled, TokenExpiring
from roomcast.errors import InvalidMessage


def frame(**fields: Any) -> str:
    return json.dumps(fields)


def room_message(room: str, offset: int | None = None, epoch: str = "e1", **more: Any) -> str:
    fields: dict[str, Any] = {"type": "room_message", "room": room, "sender": "bob", **more}
    if offset is not None:
        fields |= {"offset": offset, "epoch": epoch}
    return json.dumps(fields)


def sent(text: str) -> dict[str, Any]:
    decoded = json.loads(text)
    assert isinstance(decoded, dict)
    return decoded


def test_a_join_is_answered_with_the_rooms_position() -> None:
    """The ack's position becomes the room's; the request is settled with a Joined."""
    session = ClientSession(prefix="t")
    event_id, text = session.join("lobby")
    assert sent(text) == {"type": "join", "room": "lobby", "event_id": "t-1"}
    position = {"epoch": "e1", "offset": 17}
    outcomes = session.received(frame(type="ack", ack_event_id=event_id, position=position))
    assert outcomes == [Settled(event_id, Joined("lobby", Position("e1", 17), False, 0))]
    assert session.book.position("lobby") == Position("e1", 17)
    assert session.book.joined_rooms() == ["lobby"]


def test_a_join_since_sends_the_position_and_takes_the_replay() -> None:
    """Replayed messages come before the ack and move the position; the ack says how many."""
    session = ClientSession()
    event_id, text = session.join("lobby", since=Position("e1", 17))
    assert sent(text)["since"] == {"epoch": "e1", "offset": 17}
    [replayed] = session.received(room_message("lobby", 18))
    assert isinstance(replayed, Message) and replayed.position == Position("e1", 18)
    answer = frame(
        type="ack",
        ack_event_id=event_id,
        recovered=True,
        replayed=1,
        position={"epoch": "e1", "offset": 18},
    )
    assert session.received(answer) == [
        Settled(event_id, Joined("lobby", Position("e1", 18), True, 1))
    ]


def test_room_messages_at_or_below_the_last_offset_are_dropped() -> None:
    """A guard: the same offset twice, or an older one, in the same epoch is not delivered."""
    session = ClientSession()
    event_id, _ = session.join("lobby")
    session.received(frame(type="ack", ack_event_id=event_id))
    assert len(session.received(room_message("lobby", 1))) == 1
    assert len(session.received(room_message("lobby", 2))) == 1
    assert session.received(room_message("lobby", 2)) == []
    assert session.received(room_message("lobby", 1)) == []
    assert session.duplicates == 2
    # A new epoch starts again from its own offsets; messages without one always pass.
    assert len(session.received(room_message("lobby", 1, epoch="e2"))) == 1
    assert len(session.received(room_message("lobby"))) == 1
    assert session.book.position("lobby") == Position("e2", 1)


def test_a_publish_ack_moves_the_position_forward_only() -> None:
    """The client's own message is its position in the room (the server sends nothing
    older after it); an older position in the same epoch does not move it back."""
    session = ClientSession()
    join_id, _ = session.join("lobby")
    session.received(frame(type="ack", ack_event_id=join_id, position={"epoch": "e", "offset": 5}))
    event_id, text = session.publish("lobby", {"text": "hi"})
    assert sent(text)["data"] == {"text": "hi"}
    answer = frame(type="ack", ack_event_id=event_id, position={"epoch": "e", "offset": 9})
    assert session.received(answer) == [Settled(event_id, Position("e", 9))]
    assert session.received(room_message("lobby", 9, epoch="e")) == []  # (its own, echoed)
    book = session.book
    book.advance("lobby", Position("e", 3))
    assert book.position("lobby") == Position("e", 9)
    book.advance("lobby", Position("f", 1))
    assert book.position("lobby") == Position("f", 1)
    book.advance("elsewhere", Position("f", 1))
    assert book.position("elsewhere") is None


def test_a_publish_that_is_not_json_is_refused_before_anything_is_sent() -> None:
    session = ClientSession()
    with pytest.raises(InvalidMessage):
        session.publish("lobby", {1, 2j})
    assert session.connection_lost() == []


def test_a_rejoin_reports_its_outcome_as_an_event_before_the_answer() -> None:
    """After a reconnect: a Rejoined event (in the stream, after the replay), then the answer."""
    session = ClientSession()
    event_id, _ = session.join("lobby")
    session.received(frame(type="ack", ack_event_id=event_id, position={"epoch": "e", "offset": 2}))
    [(room, since)] = session.book.rejoins()
    assert (room, since) == ("lobby", Position("e", 2))
    event_id, _ = session.rejoin(room, since)
    lost = frame(
        type="ack",
        ack_event_id=event_id,
        recovered=False,
        replayed=0,
        position={"epoch": "f", "offset": 40},
    )
    rejoined, settled = session.received(lost)
    assert rejoined == Rejoined("lobby", False, 0, Position("f", 40))
    assert isinstance(settled, Settled) and settled.error is None


def test_a_refused_rejoin_forgets_the_room() -> None:
    session = ClientSession()
    session.book.joined("lobby", None)
    event_id, _ = session.rejoin("lobby", None)
    refusal = frame(type="error", error="at most 1 rooms", code=1008, ref_event_id=event_id)
    rejoined, settled = session.received(refusal)
    assert rejoined == Rejoined("lobby", False, 0, None, error="at most 1 rooms")
    assert isinstance(settled, Settled) and isinstance(settled.error, RequestRefused)
    assert settled.error.code == 1008 and "at most 1 rooms" in str(settled.error)
    assert session.book.joined_rooms() == []


def test_a_refused_first_join_is_forgotten_but_a_repeated_one_is_kept() -> None:
    session = ClientSession()
    event_id, _ = session.join("$secret")
    refused = session.received(frame(type="error", error="reserved", ref_event_id=event_id))
    assert isinstance(refused[0], Settled) and isinstance(refused[0].error, RequestRefused)
    assert refused[0].error.code is None
    assert "$secret" not in session.book
    session.book.joined("lobby", None)
    event_id, _ = session.join("lobby")
    session.received(frame(type="error", error="no", code=1008, ref_event_id=event_id))
    assert session.book.joined_rooms() == ["lobby"]


def test_leave_forgets_the_room_at_once() -> None:
    session = ClientSession()
    session.book.joined("lobby", Position("e", 1))
    event_id, text = session.leave("lobby")
    assert sent(text)["type"] == "leave"
    assert session.book.rejoins() == []
    assert session.received(frame(type="ack", ack_event_id=event_id)) == [Settled(event_id)]


def test_history_answers_are_parsed() -> None:
    session = ClientSession()
    event_id, text = session.history("lobby", Position("e", 17), 50)
    assert sent(text)["since"] == {"epoch": "e", "offset": 17} and sent(text)["limit"] == 50
    answer = {
        "type": "history",
        "room": "lobby",
        "ref_event_id": event_id,
        "position": {"epoch": "e", "offset": 19},
        "recovered": True,
        "messages": [
            json.loads(room_message("lobby", 18, epoch="e", data=1)),
            json.loads(room_message("lobby", 19, epoch="e", data=2)),
            "not a message",
        ],
    }
    [settled] = session.received(json.dumps(answer))
    assert isinstance(settled, Settled) and isinstance(settled.result, History)
    assert [m.data for m in settled.result.messages] == [1, 2]
    assert settled.result.position == Position("e", 19) and settled.result.recovered
    assert session.book.position("lobby") is None  # reading history is not receiving it
    event_id, text = session.history("lobby", None, None)
    assert set(sent(text)) == {"type", "room", "event_id"}
    gone = frame(type="history", room="lobby", ref_event_id=event_id, recovered=False)
    [settled] = session.received(gone)
    assert isinstance(settled, Settled) and isinstance(settled.result, History)
    assert not settled.result.recovered and settled.result.messages == ()


def test_a_servers_ping_is_answered_and_pongs_settle_pings() -> None:
    session = ClientSession()
    assert session.received(frame(type="ping", event_id="s1")) == [
        Reply('{"type":"pong","ping_event_id":"s1"}')
    ]
    event_id, _ = session.ping()
    assert session.received(frame(type="pong", ping_event_id=event_id)) == [Settled(event_id)]
    heartbeat = sent(session.heartbeat())
    assert heartbeat["type"] == "ping"
    assert session.received(frame(type="pong", ping_event_id=heartbeat["event_id"])) == []


def test_unsolicited_frames_reach_the_application() -> None:
    """Presence, stats, direct messages and errors tied to no request are ServerMessages; a
    token expiry warning also asks for a refresh."""
    session = ClientSession()
    presence = {"type": "presence", "room": "lobby", "members": []}
    assert session.received(json.dumps(presence)) == [ServerMessage(presence)]
    assert ServerMessage(presence).type == "presence"
    assert ServerMessage({"type": 3}).type is None
    warning = {"type": "error", "error": "token expired", "code": 4001}
    assert session.received(json.dumps(warning)) == [TokenExpiring(), ServerMessage(warning)]
    late = {"type": "error", "error": "late", "code": 1008, "ref_event_id": "gone"}
    assert session.received(json.dumps(late)) == [ServerMessage(late)]
    assert session.received(frame(type="ack", ack_event_id="gone")) == []


def test_malformed_frames_are_counted_and_dropped() -> None:
    session = ClientSession()
    for raw in ("not json", "[1, 2]", b"\xff"):
        assert session.received(raw) == []
    assert session.malformed == 3


def test_a_message_from_the_wire_takes_what_is_there() -> None:
    message = Message.from_wire({"room": "r", "sender": 5, "timestamp": "x", "epoch": 3})
    assert message == Message("r", None, None, None, None, None)
    assert Position.from_wire({"epoch": "e", "offset": True}) is None
    assert Position.from_wire(None) is None


def test_abandoned_requests_ignore_late_answers() -> None:
    """A timed-out first join is taken as failed; the connection's loss abandons the rest."""
    session = ClientSession()
    join_id, _ = session.join("lobby")
    session.abandon(join_id)
    assert "lobby" not in session.book
    assert session.received(frame(type="ack", ack_event_id=join_id)) == []
    publish_id, _ = session.publish("lobby", 1)
    auth_id, text = session.auth("token")
    assert sent(text) == {"type": "auth", "token": "token", "event_id": auth_id}
    assert session.connection_lost() == [publish_id, auth_id]
    session.abandon("never-sent")


def test_the_book_tracks_only_its_rooms() -> None:
    book = RoomBook()
    assert book.accept("elsewhere", Position("e", 1))
    assert book.joining("lobby", Position("e", 4)) is False
    assert book.joining("lobby", None) is False
    assert book.position("lobby") == Position("e", 4)
    book.joined("lobby", None)
    assert book.joining("lobby", Position("e", 6)) is True
    assert book.position("lobby") == Position("e", 6)
    book.forget("lobby")
    book.forget("lobby")
    assert "lobby" not in book
