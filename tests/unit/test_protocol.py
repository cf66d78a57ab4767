"""The client protocol's pure interpreter: commands in, typed messages or errors out."""

from __future__ import annotations

import json

import pytest

from roomcast import ErrorMessage, PingMessage, PongMessage
from roomcast.protocol import (
    JoinMessage,
    LeaveMessage,
    PublishMessage,
    RoomMessage,
    interpret,
)


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ({"type": "join", "room": "r"}, JoinMessage),
        ({"type": "leave", "room": "r", "event_id": "e"}, LeaveMessage),
        ({"type": "publish", "room": "r", "data": {"x": [1]}}, PublishMessage),
        ({"type": "ping"}, PingMessage),
        ({"type": "pong", "ping_event_id": "p"}, PongMessage),
    ],
)
def test_commands_are_recognised(raw: dict[str, object], kind: type) -> None:
    """Each client command parses to its message class."""
    assert type(interpret(json.dumps(raw))) is kind


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("{oops", "not valid JSON"),
        ('{"type": "join"}', "needs the field 'room'"),
        ('{"type": "join", "room": 5}', "must be a string"),
        ('{"type": "teleport"}', "unknown message type"),
    ],
)
def test_bad_frames_become_errors_with_code_1003(raw: str, fragment: str) -> None:
    """Invalid frames produce an ErrorMessage with code 1003 naming the problem."""
    answer = interpret(raw)
    assert isinstance(answer, ErrorMessage)
    assert fragment in answer.error and answer.code == 1003


def test_server_only_messages_are_refused_with_the_event_id() -> None:
    """A client may not send acks, errors or room messages; the answer refers to its id."""
    answer = interpret(json.dumps({"type": "room_message", "room": "r", "event_id": "e9"}))
    assert isinstance(answer, ErrorMessage)
    assert answer.ref_event_id == "e9" and "cannot send 'room_message'" in answer.error


def test_room_message_round_trips() -> None:
    """What room members receive parses back to the same RoomMessage."""
    message = RoomMessage(room="r", sender="alice", data={"t": 1})
    assert RoomMessage.from_json(message.to_json()) == message
