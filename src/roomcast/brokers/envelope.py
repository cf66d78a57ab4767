"""The bus envelope: how a message from one instance reaches the others, and how loss shows.

A distributed hub publishes every cluster-wide send once to a broker channel.  The envelope
carries what the receivers need to fan the message out *without re-encoding it*: the target,
the connection ids to leave out, and the client frame's payload bytes exactly as the origin
encoded them.  It is a small binary format with a version byte, never pickle: whatever can
publish to the broker must not be able to run code in the hub (python-socketio's
CVE-2025-61765 was remote code execution through pickled bus messages).

Layout, big-endian::

    magic      2 bytes   b"RC"
    version    1 byte    1
    flags      1 byte    bit 0: binary frame; bit 1: close the targets (payload = reason)
    target     1 byte    Target
    origin    16 bytes   random id of the publishing instance
    stream     8 bytes   which run of sequence numbers this is (see StreamCounter)
    seq        8 bytes   position in that run, from 1
    target id  2 bytes length + UTF-8
    exclude    4 bytes count, then per id 2 bytes length + UTF-8
    payload    the rest

A message of a room with history travels with its position in front of the envelope::

    b"RP" offset (decimal) b"," epoch b"," envelope

because the position is assigned where the message is stored (by a Redis script, which can
only prepend to bytes), after the origin sealed the envelope.

Brokers such as Redis pub/sub deliver at most once: a subscriber that is disconnected, or not
yet resubscribed after a broker restart, misses messages without any error (measured with
redis-py 8.1: 5-8 messages that PUBLISH had accepted never arrived, in 3 of 7 restarts).
Sequence numbers per (origin, channel) make that loss countable: ``StreamCounter`` numbers
messages at the origin, ``GapTracker`` finds the holes at the receiver.  Everything here is
pure: no I/O, no clock.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from collections.abc import Collection

from roomcast.errors import InvalidMessage
from roomcast.history.positions import Position, valid_epoch

__all__ = [
    "Envelope",
    "GapTracker",
    "InvalidEnvelope",
    "StreamCounter",
    "Target",
    "pack",
    "split_position",
    "unpack",
]

MAGIC = b"RC"
VERSION = 1
_HEAD = struct.Struct(">2sBBB16sQQH")
_COUNT = struct.Struct(">I")
_LENGTH = struct.Struct(">H")
_BINARY = 0x01
_CLOSE = 0x02
_KNOWN_FLAGS = _BINARY | _CLOSE
_MAX_ID_BYTES = 0xFFFF


class InvalidEnvelope(InvalidMessage):
    """A message on a broker channel is not a roomcast envelope this version can read."""


class Target(enum.IntEnum):
    """Who an envelope is for; also names the channel family it travels on."""

    BROADCAST = 0
    ROOM = 1
    USER = 2
    CONNECTION = 3


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    """One message on the bus.

    Attributes:
        target: Broadcast, room, user or single connection.
        target_id: The room, user or connection id ("" for a broadcast).
        payload: The client frame's payload (UTF-8 text unless ``binary``); for ``close``, the
            close reason.
        binary: Deliver as a binary frame.
        close: Close the targets instead of sending them anything.
        exclude: Connection ids that must not receive it, wherever they live.
        origin: The publishing instance (16 bytes).
        stream: The origin's sequence run for this channel.
        seq: Position in the run, from 1.
    """

    target: Target
    target_id: str
    payload: bytes
    binary: bool = False
    close: bool = False
    exclude: frozenset[str] = frozenset()
    origin: bytes = bytes(16)
    stream: int = 0
    seq: int = 0
    position: Position | None = None
    """Where the message stands in its room's history (rooms with history only)."""


def pack(
    target: Target,
    target_id: str,
    payload: bytes,
    *,
    origin: bytes,
    stream: int,
    seq: int,
    binary: bool = False,
    close: bool = False,
    exclude: Collection[str] = (),
) -> bytes:
    """The wire form of an envelope.

    Raises:
        InvalidEnvelope: an id is too long to encode (over 65535 bytes of UTF-8).
    """
    if len(origin) != 16:
        raise ValueError("origin must be 16 bytes")
    flags = (_BINARY if binary else 0) | (_CLOSE if close else 0)
    target_bytes = _encode_id(target_id)
    parts = [
        _HEAD.pack(MAGIC, VERSION, flags, target, origin, stream, seq, len(target_bytes)),
        target_bytes,
        _COUNT.pack(len(exclude)),
    ]
    for connection_id in exclude:
        encoded = _encode_id(connection_id)
        parts.append(_LENGTH.pack(len(encoded)))
        parts.append(encoded)
    parts.append(payload)
    return b"".join(parts)


def _encode_id(value: str) -> bytes:
    encoded = value.encode("utf-8", "surrogatepass")
    if len(encoded) > _MAX_ID_BYTES:
        raise InvalidEnvelope(f"id of {len(encoded)} bytes does not fit in an envelope")
    return encoded


_POSITIONED = b"RP"


def split_position(data: bytes) -> tuple[Position | None, bytes]:
    """``(position, envelope bytes)`` of a message from the bus (no position: ``None``).

    Raises:
        InvalidEnvelope: a position prefix that does not parse.
    """
    if not data.startswith(_POSITIONED):
        return None, data
    first = data.find(b",", 2, 24)
    second = data.find(b",", first + 1, first + 40) if first > 0 else -1
    if second < 0:
        raise InvalidEnvelope("malformed position in front of an envelope")
    offset_text, epoch = data[2:first], data[first + 1 : second].decode("ascii", "replace")
    if not offset_text.isdigit() or not valid_epoch(epoch):
        raise InvalidEnvelope("malformed position in front of an envelope")
    return Position(epoch, int(offset_text)), data[second + 1 :]


def unpack(data: bytes, position: Position | None = None) -> Envelope:
    """Parse an envelope from the bus (``position``: what ``split_position`` found).

    Raises:
        InvalidEnvelope: not an envelope (foreign publisher, other version, truncated, bad
            UTF-8 in an id or in a text payload).
    """
    if len(data) < _HEAD.size:
        raise InvalidEnvelope(f"{len(data)} bytes is too short for an envelope")
    magic, version, flags, kind, origin, stream, seq, target_length = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise InvalidEnvelope("not a roomcast envelope (bad magic)")
    if version != VERSION:
        raise InvalidEnvelope(f"envelope version {version} is not supported (only {VERSION})")
    if flags & ~_KNOWN_FLAGS:
        raise InvalidEnvelope(f"unknown envelope flags {flags:#04x}")
    try:
        target = Target(kind)
    except ValueError:
        raise InvalidEnvelope(f"unknown envelope target {kind}") from None
    view = memoryview(data)
    offset = _HEAD.size
    target_id, offset = _read_id(view, offset, target_length)
    if offset + _COUNT.size > len(data):
        raise InvalidEnvelope("envelope truncated in its exclude list")
    (count,) = _COUNT.unpack_from(data, offset)
    offset += _COUNT.size
    if count > (len(data) - offset) // _LENGTH.size:
        raise InvalidEnvelope("envelope truncated in its exclude list")
    excluded: list[str] = []
    for _ in range(count):
        if offset + _LENGTH.size > len(data):
            raise InvalidEnvelope("envelope truncated in its exclude list")
        (length,) = _LENGTH.unpack_from(data, offset)
        connection_id, offset = _read_id(view, offset + _LENGTH.size, length)
        excluded.append(connection_id)
    payload = data[offset:]
    binary = bool(flags & _BINARY)
    if not binary:
        try:
            payload.decode()
        except UnicodeDecodeError:
            raise InvalidEnvelope("text payload is not valid UTF-8") from None
    return Envelope(
        target,
        target_id,
        payload,
        binary=binary,
        close=bool(flags & _CLOSE),
        exclude=frozenset(excluded),
        origin=origin,
        stream=stream,
        seq=seq,
        position=position,
    )


def _read_id(view: memoryview, offset: int, length: int) -> tuple[str, int]:
    end = offset + length
    if end > len(view):
        raise InvalidEnvelope("envelope truncated in an id")
    try:
        return str(view[offset:end], "utf-8"), end
    except UnicodeDecodeError:
        raise InvalidEnvelope("an id in the envelope is not valid UTF-8") from None


class StreamCounter:
    """Numbers an origin's messages per channel, with bounded memory.

    Each channel gets a *stream*: an id unique within this origin (taken from one counter that
    only grows) and sequence numbers 1, 2, 3...  When more than ``limit`` channels are known,
    the least recently used one is forgotten; its next message starts a new stream, which a
    receiver recognises by the new stream id instead of mistaking it for a duplicate.

    Args:
        limit: Most channels remembered at once.
    """

    __slots__ = ("_clock", "_limit", "_streams")

    def __init__(self, limit: int = 100_000) -> None:
        if limit < 1:
            raise ValueError("limit must be positive")
        self._limit = limit
        self._clock = 0
        # channel -> [stream, last seq]; dict order is recency (moved to the end on use).
        self._streams: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def next(self, channel: str) -> tuple[int, int]:
        """``(stream, seq)`` for the next message on ``channel``."""
        state = self._streams.pop(channel, None)
        if state is None:
            self._clock += 1
            state = [self._clock, 0]
            if len(self._streams) >= self._limit:
                del self._streams[next(iter(self._streams))]
        state[1] += 1
        self._streams[channel] = state
        return state[0], state[1]


class Verdict(enum.Enum):
    """What a receiver should do with an envelope, after checking its sequence number."""

    DELIVER = "deliver"
    DUPLICATE = "duplicate"
    """Already seen (or older than what was seen): drop it."""


class GapTracker:
    """Finds the messages a receiver missed, per (channel, origin).

    A receiver that has seen an origin's stream on a channel, and has been subscribed since,
    should see every later message of that origin there.  A jump in the sequence counts the
    messages skipped; a message from a *newer* stream counts the ones before it in that stream.
    With no history (just subscribed), the first message sets the baseline and counts nothing.

    Callers forget a channel when they unsubscribe from it, because from then on its holes are
    expected.

    Args:
        origins_per_channel: Most origins remembered per channel; origins come and go as
            instances restart, and the oldest are forgotten first.
    """

    __slots__ = ("_channels", "_origins_limit", "duplicates", "missed")

    def __init__(self, origins_per_channel: int = 1024) -> None:
        self._origins_limit = origins_per_channel
        self._channels: dict[str, dict[bytes, tuple[int, int]]] = {}
        self.missed = 0
        """Messages known to have been published but never seen."""
        self.duplicates = 0
        """Messages seen twice (or out of order) and dropped."""

    def check(self, channel: str, origin: bytes, stream: int, seq: int) -> tuple[Verdict, int]:
        """Record one message; return what to do with it and how many were missed before it."""
        origins = self._channels.get(channel)
        if origins is None:
            origins = self._channels[channel] = {}
        last = origins.get(origin)
        missed = 0
        if last is not None:
            last_stream, last_seq = last
            if stream == last_stream:
                if seq <= last_seq:
                    self.duplicates += 1
                    return Verdict.DUPLICATE, 0
                missed = seq - last_seq - 1
            elif stream > last_stream:
                missed = seq - 1
            else:
                self.duplicates += 1
                return Verdict.DUPLICATE, 0
        elif len(origins) >= self._origins_limit:
            del origins[next(iter(origins))]
        origins[origin] = (stream, seq)
        self.missed += missed
        return Verdict.DELIVER, missed

    def forget(self, channel: str) -> None:
        """Drop the history of ``channel`` (the receiver unsubscribed from it)."""
        self._channels.pop(channel, None)

    def __len__(self) -> int:
        return len(self._channels)
