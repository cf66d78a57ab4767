"""Frames: an outgoing message encoded once, shared by every recipient.

Encoding dominates nothing when it happens once per broadcast, and everything when it happens
once per recipient; so the send methods turn a payload into one ``Frame`` and transports only
ever see that object.  Each transport takes the representation it needs from it (the ASGI
adapter a prebuilt ``websocket.send`` event, a native transport the payload bytes).
"""

from __future__ import annotations

from typing import Any

from roomcast.errors import InvalidMessage
from roomcast.messages import MessageType, WSMessage, dumps

__all__ = ["Frame", "encode"]


class Frame:
    """One encoded message.

    Attributes:
        binary: True for a binary frame, False for a text frame.
        payload: The frame's payload bytes (UTF-8 for text), used for size accounting and by
            transports that write bytes.
        size: ``len(payload)``; what the frame costs in a send buffer.
    """

    __slots__ = ("_asgi_event", "_text", "_wire", "binary", "payload", "size")

    def __init__(self, text: str | None = None, data: bytes | None = None) -> None:
        if text is not None:
            self.payload = _utf8(text)
            self.binary = False
        elif data is not None:
            self.payload = data
            self.binary = True
        else:
            raise ValueError("a Frame needs text or data")
        self._text = text
        self.size = len(self.payload)
        self._wire: bytes | None = None
        self._asgi_event: dict[str, Any] | None = None

    @classmethod
    def from_payload(cls, payload: bytes, binary: bool) -> Frame:
        """A frame around payload bytes encoded elsewhere (by another instance), without
        encoding again; text payloads must already be valid UTF-8."""
        frame = cls.__new__(cls)
        frame.payload = payload
        frame.binary = binary
        frame.size = len(payload)
        frame._text = None
        frame._wire = None
        frame._asgi_event = None
        return frame

    @property
    def asgi_event(self) -> dict[str, Any]:
        """A ``websocket.send`` ASGI event, built on first use and then passed to every ASGI
        recipient (ASGI servers only read it)."""
        event = self._asgi_event
        if event is None:
            if self.binary:
                event = {"type": "websocket.send", "bytes": self.payload}
            else:
                text = self._text if self._text is not None else self.payload.decode()
                event = {"type": "websocket.send", "text": text}
            self._asgi_event = event
        return event

    @property
    def wire(self) -> bytes:
        """The whole server-to-client WebSocket frame (header and unmasked payload).

        Built on first use and kept, so native transports write the same bytes object to
        every recipient.  No extension is applied: the native server negotiates none.
        """
        wire = self._wire
        if wire is None:
            wire = self._wire = _frame_header(self.binary, self.size) + self.payload
        return wire

    def __repr__(self) -> str:
        kind = "binary" if self.binary else "text"
        return f"<Frame {kind} {self.size} B>"


def _frame_header(binary: bool, length: int) -> bytes:
    # RFC 6455 section 5.2: FIN + opcode, then a 7-bit, 16-bit or 64-bit length; servers
    # do not mask.
    first = 0x82 if binary else 0x81
    if length < 126:
        return bytes((first, length))
    if length < 1 << 16:
        return bytes((first, 126)) + length.to_bytes(2, "big")
    return bytes((first, 127)) + length.to_bytes(8, "big")


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise InvalidMessage("text payload is not encodable as UTF-8 (lone surrogate?)") from None


def _as_text(message: Any) -> str:
    if isinstance(message, str):
        return message
    if isinstance(message, bytes | bytearray | memoryview):
        try:
            return bytes(message).decode()
        except UnicodeDecodeError:
            raise InvalidMessage("bytes sent as text are not valid UTF-8") from None
    if isinstance(message, WSMessage):
        return message.to_json()
    return dumps(message)


def encode(message: Any, kind: MessageType | None = None) -> Frame:
    """Encode ``message`` into the frame that ``kind`` asks for.

    With ``kind`` omitted: ``str`` goes as text, bytes as binary, anything else as JSON text.
    ``TEXT``, ``JSON``, ``PING`` and ``PONG`` give text frames; ``BYTES`` gives a binary frame.

    Raises:
        InvalidMessage: the payload cannot be encoded (not JSON-encodable, bytes that are not
            UTF-8 where text is required, lone surrogates in a str).
        ValueError: ``kind`` is ``CLOSE``, which is an action, not a frame.
    """
    if kind is None:
        if isinstance(message, bytes | bytearray | memoryview):
            return Frame(data=bytes(message))
        return Frame(text=_as_text(message))
    if kind is MessageType.BYTES:
        if isinstance(message, bytes | bytearray | memoryview):
            return Frame(data=bytes(message))
        return Frame(data=_utf8(_as_text(message)))
    if kind is MessageType.CLOSE:
        raise ValueError("MessageType.CLOSE closes connections; it has no frame")
    return Frame(text=_as_text(message))
