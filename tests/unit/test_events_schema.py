"""Lifecycle events: the JSON object of each kind, and webhook bodies that round-trip."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomcast.events.schema import (
    ROOM_KINDS,
    USER_KINDS,
    Kind,
    LifecycleEvent,
    decode_events,
    encode_events,
)

EXAMPLES = [
    LifecycleEvent(Kind.CONNECT, "a1", 1765000000.5, 1, user="ann", connection="c1", data={"x": 1}),
    LifecycleEvent(
        Kind.DISCONNECT,
        "a2",
        1765000001.0,
        2,
        user="ann",
        connection="c1",
        reason="going away",
        code=1001,
        instance="i1",
    ),
    LifecycleEvent(Kind.JOIN, "a3", 1.0, 3, user="ann", room="lobby", connection="c1"),
    LifecycleEvent(Kind.LEAVE, "a4", 1.0, 4, user="ann", room="lobby", synthetic=True),
    LifecycleEvent(Kind.OCCUPIED, "a5", 1.0, 1, room="lobby"),
    LifecycleEvent(Kind.VACATED, "a6", 1.0, 2, room="lobby", synthetic=True, instance="i2"),
    LifecycleEvent(Kind.PUBLISH, "a7", 1.0, 5, user="ann", room="lobby", data=["hé", None]),
]


def test_every_kind_is_a_user_or_a_room_kind() -> None:
    """Each kind has one subject: the user, or the room for occupied/vacated."""
    assert set(Kind) == USER_KINDS | ROOM_KINDS
    assert not USER_KINDS & ROOM_KINDS


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.kind.value)
def test_round_trip(event: LifecycleEvent) -> None:
    """as_dict and from_dict are inverses, and so are encode_events and decode_events."""
    assert LifecycleEvent.from_dict(event.as_dict()) == event
    assert decode_events(encode_events([event])) == [event]


def test_the_json_object_puts_type_first_and_leaves_out_what_is_absent() -> None:
    """``type``, ``id``, ``time``, ``seq`` first; None fields absent; synthetic only if true."""
    occupied = EXAMPLES[4].as_dict()
    assert occupied == {"type": "occupied", "id": "a5", "time": 1.0, "seq": 1, "room": "lobby"}
    assert list(EXAMPLES[1].as_dict())[:4] == ["type", "id", "time", "seq"]
    assert EXAMPLES[3].as_dict()["synthetic"] is True


def test_a_body_is_compact_utf8_json() -> None:
    """One ``{"events": [...]}`` object, no spaces, non-ASCII kept as UTF-8."""
    body = encode_events([EXAMPLES[6]])
    assert body.startswith(b'{"events":[{"type":"publish","id":"a7"')
    assert b" " not in body
    assert "hé".encode() in body
    assert encode_events([]) == b'{"events":[]}'


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'{"events": {}}',
        b'{"other": []}',
        b'{"events": [{"type": "connect"}]}',
        b'{"events": [{"type": "teleport", "id": "x", "time": 1, "seq": 1}]}',
        b'{"events": [{"type": "join", "id": "x", "time": "soon", "seq": 1}]}',
    ],
)
def test_decode_refuses_what_is_not_a_body(body: bytes) -> None:
    """Not an object with a list of events, or an item that is not an event: ValueError."""
    with pytest.raises(ValueError):
        decode_events(body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(
    kind=st.sampled_from(Kind),
    seq=st.integers(min_value=0, max_value=2**53),
    time=st.floats(min_value=0, max_value=4e9),
    user=st.none() | st.text(),
    data=json_values,
    synthetic=st.booleans(),
)
def test_any_event_round_trips(
    kind: Kind, seq: int, time: float, user: str | None, data: Any, synthetic: bool
) -> None:
    """Whatever the fields hold, the body decodes to the same event."""
    event = LifecycleEvent(kind, "id", time, seq, user=user, data=data, synthetic=synthetic)
    body = encode_events([event, event])
    assert decode_events(body) == [event, event]
    json.loads(body)
