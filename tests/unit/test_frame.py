"""Encoding payloads into frames: which frame kind, which bytes, which errors."""

from __future__ import annotations

import pytest

from roomcast import Frame, InvalidMessage, MessageType, PingMessage, encode


def test_kind_is_inferred_from_the_payload() -> None:
    """str -> text, bytes -> binary, anything else -> JSON text."""
    assert (encode("hé").binary, encode("hé").payload) == (False, "hé".encode())
    assert (encode(b"\x00").binary, encode(bytearray(b"ab")).payload) == (True, b"ab")
    assert encode({"a": 1}).asgi_event == {"type": "websocket.send", "text": '{"a":1}'}
    assert encode(memoryview(b"xy")).asgi_event == {"type": "websocket.send", "bytes": b"xy"}


@pytest.mark.parametrize(
    "kind", [MessageType.TEXT, MessageType.JSON, MessageType.PING, MessageType.PONG]
)
def test_text_kinds_make_text_frames(kind: MessageType) -> None:
    """TEXT, JSON, PING and PONG give text frames; str passes unchanged, bytes are decoded."""
    assert encode('{"a":1}', kind).asgi_event["text"] == '{"a":1}'
    assert encode(b"ok", kind).asgi_event["text"] == "ok"
    assert encode([1], kind).asgi_event["text"] == "[1]"
    ping = PingMessage(event_id="p", timestamp=1.0)
    assert encode(ping, kind).asgi_event["text"] == ping.to_json()


def test_bytes_kind_makes_binary_frames() -> None:
    """BYTES gives a binary frame whatever the payload."""
    assert encode("é", MessageType.BYTES).asgi_event == {
        "type": "websocket.send",
        "bytes": "é".encode(),
    }
    assert encode({"a": 1}, MessageType.BYTES).payload == b'{"a":1}'
    assert encode(b"raw", MessageType.BYTES).size == 3


def test_bad_payloads_raise_invalid_message() -> None:
    """Undecodable bytes, lone surrogates and unencodable objects are refused clearly."""
    with pytest.raises(InvalidMessage, match="not valid UTF-8"):
        encode(b"\xff", MessageType.TEXT)
    with pytest.raises(InvalidMessage, match="lone surrogate"):
        encode("\ud800")
    with pytest.raises(InvalidMessage, match="not JSON-encodable"):
        encode({"x": object()})


def test_close_is_not_a_frame() -> None:
    """CLOSE is an action; encoding it is a programming error."""
    with pytest.raises(ValueError, match="no frame"):
        encode("bye", MessageType.CLOSE)
    with pytest.raises(ValueError, match="needs text or data"):
        Frame()


def test_size_counts_encoded_bytes() -> None:
    """A frame's size is its UTF-8 payload length, not its character count."""
    frame = encode("€€")
    assert frame.size == 6
    assert repr(frame) == "<Frame text 6 B>"


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
@pytest.mark.parametrize("binary", [False, True])
def test_wire_bytes_parse_as_one_websocket_frame(size: int, binary: bool) -> None:
    """Frame.wire is a complete unmasked frame that websockets' own parser reads back."""
    from websockets.frames import Frame as WsFrame
    from websockets.frames import Opcode
    from websockets.streams import StreamReader

    frame = encode(b"b" * size) if binary else encode("t" * size)
    assert frame.wire is frame.wire  # built once, then shared
    reader = StreamReader()
    reader.feed_data(frame.wire)
    parser = WsFrame.parse(reader.read_exact, mask=False)
    with pytest.raises(StopIteration) as done:
        next(parser)
    parsed = done.value.value
    assert parsed.opcode is (Opcode.BINARY if binary else Opcode.TEXT)
    assert parsed.fin and parsed.data == frame.payload
