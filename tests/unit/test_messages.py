"""Message schemas: serialization, parsing to the right subclass, and clear errors."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import uuid

import pytest

from roomcast import (
    AckMessage,
    ErrorMessage,
    InvalidMessage,
    MessageType,
    PingMessage,
    PongMessage,
    RoomcastError,
    WSMessage,
)
from roomcast.messages import dumps


def test_message_type_values_are_the_seeds() -> None:
    """MessageType has exactly the seed's members and values."""
    assert {m.name: m.value for m in MessageType} == {
        "TEXT": "text",
        "JSON": "json",
        "BYTES": "bytes",
        "PING": "ping",
        "PONG": "pong",
        "CLOSE": "close",
    }


@pytest.mark.parametrize(
    "message",
    [
        WSMessage(data={"hello": [1, 2]}),
        PingMessage(),
        PongMessage(ping_event_id="p1"),
        ErrorMessage(error="nope", code=1008, ref_event_id="e1"),
        AckMessage(ack_event_id="e2"),
    ],
)
def test_round_trip_returns_the_same_subclass(message: WSMessage) -> None:
    """to_json then from_json gives an equal message of the same class."""
    parsed = WSMessage.from_json(message.to_json())
    assert parsed == message and type(parsed) is type(message)
    assert WSMessage.from_json(message.to_json().encode()) == message
    assert message.to_dict()["type"] == message.type == type(message).TYPE


def test_defaults_give_unique_ids_and_current_time() -> None:
    """Messages created without an event_id get distinct ids and a timestamp."""
    first, second = PingMessage(), PingMessage()
    assert first.event_id != second.event_id
    assert first.timestamp > 1.7e9


def test_subclass_from_json_insists_on_its_type() -> None:
    """PingMessage.from_json refuses a pong."""
    with pytest.raises(InvalidMessage, match="expected a 'ping' message"):
        PingMessage.from_json(PongMessage().to_json())
    assert isinstance(AckMessage.from_json('{"type":"ack","ack_event_id":"x"}'), AckMessage)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("{", "not valid JSON"),
        ("[1, 2]", "must be a JSON object, not list"),
        ('"text"', "must be a JSON object, not str"),
        ("{}", "needs a string field 'type'"),
        ('{"type": 5}', "needs a string field 'type'"),
        ('{"type": "nope"}', "unknown message type 'nope'"),
        ('{"type": "ack"}', "needs the field 'ack_event_id'"),
        ('{"type": "ack", "ack_event_id": 5}', "'ack_event_id' of a 'ack' message must be a str"),
        ('{"type": "ping", "event_id": null}', "'event_id' of a 'ping' message must be a str"),
        ('{"type": "ping", "timestamp": "now"}', "must be a number"),
        ('{"type": "ping", "timestamp": true}', "must be a number"),
        ('{"type": "error", "error": "x", "code": 1.5}', "integer or null"),
        ('{"type": "ping", "extra": 1}', "unknown field 'extra'"),
        ("[" * 100_000, "too deeply nested"),
        ('{"type": "ping", "data": ' + "9" * 1_000_000 + "}", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        ('{"type": "ping", "timestamp": NaN', "not valid JSON"),
    ],
)
def test_invalid_input_raises_invalid_message(raw: str | bytes, fragment: str) -> None:
    """Every kind of bad input gives InvalidMessage (a ValueError) naming the problem."""
    with pytest.raises(InvalidMessage) as caught:
        WSMessage.from_json(raw)
    assert fragment in str(caught.value)
    assert isinstance(caught.value, RoomcastError) and isinstance(caught.value, ValueError)


def test_error_text_never_echoes_long_input() -> None:
    """A 10 KB type name is cut down in the error message."""
    with pytest.raises(InvalidMessage) as caught:
        WSMessage.from_json(json.dumps({"type": "x" * 10_000}))
    assert len(str(caught.value)) < 200


def test_non_string_input_is_refused() -> None:
    """from_json of something that is not text says so."""
    with pytest.raises(InvalidMessage, match="must be str or bytes, not int"):
        WSMessage.from_json(5)  # type: ignore[arg-type]


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int


def test_dumps_understands_common_python_values() -> None:
    """dataclasses, datetimes, enums, UUIDs, sets and messages encode; NaN does not."""
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    ident = uuid.UUID(int=1)
    encoded = dumps(
        {
            "p": Point(1, 2),
            "t": when,
            "c": Color.RED,
            "u": ident,
            "s": {1},
            "m": AckMessage(event_id="e", timestamp=1.0, ack_event_id="x"),
        }
    )
    assert json.loads(encoded) == {
        "p": {"x": 1, "y": 2},
        "t": "2026-01-02T03:04:05+00:00",
        "c": "red",
        "u": str(ident),
        "s": [1],
        "m": {"type": "ack", "event_id": "e", "timestamp": 1.0, "data": None, "ack_event_id": "x"},
    }
    assert dumps("é") == '"é"'
    with pytest.raises(InvalidMessage, match="not JSON-encodable"):
        dumps(float("nan"))
    with pytest.raises(InvalidMessage, match="cannot encode object"):
        dumps(object())
