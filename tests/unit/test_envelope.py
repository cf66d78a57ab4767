"""The bus envelope and the sequence bookkeeping, pure: no broker, no loop."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomcast.brokers.envelope import (
    MAGIC,
    GapTracker,
    InvalidEnvelope,
    StreamCounter,
    Target,
    Verdict,
    pack,
    unpack,
)

ORIGIN = bytes(range(16))
ids = st.text(max_size=40)


@given(
    target=st.sampled_from(Target),
    target_id=ids,
    payload=st.binary(max_size=300),
    close=st.booleans(),
    exclude=st.frozensets(ids, max_size=5),
    stream=st.integers(0, 2**64 - 1),
    seq=st.integers(0, 2**64 - 1),
)
def test_binary_envelopes_round_trip(
    target: Target,
    target_id: str,
    payload: bytes,
    close: bool,
    exclude: frozenset[str],
    stream: int,
    seq: int,
) -> None:
    """Whatever is packed (ids with any characters, any payload bytes) unpacks unchanged."""
    data = pack(
        target,
        target_id,
        payload,
        origin=ORIGIN,
        stream=stream,
        seq=seq,
        binary=True,
        close=close,
        exclude=exclude,
    )
    envelope = unpack(data)
    assert (envelope.target, envelope.target_id, envelope.payload) == (target, target_id, payload)
    assert (envelope.binary, envelope.close, envelope.exclude) == (True, close, exclude)
    assert (envelope.origin, envelope.stream, envelope.seq) == (ORIGIN, stream, seq)


def test_text_payload_keeps_its_bytes() -> None:
    """A text envelope carries the origin's UTF-8 bytes as they are."""
    data = pack(Target.ROOM, "lobby", "héllo".encode(), origin=ORIGIN, stream=1, seq=2)
    envelope = unpack(data)
    assert envelope.payload == "héllo".encode()
    assert not envelope.binary and not envelope.close and envelope.exclude == frozenset()


def _valid() -> bytes:
    return pack(Target.USER, "u1", b"{}", origin=ORIGIN, stream=1, seq=1, exclude=("a" * 32, "b"))


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "too short"),
        (b"\x80\x03}q\x00(X\x04\x00\x00\x00type" + bytes(40), "bad magic"),  # a pickle
        (MAGIC + bytes([2]) + _valid()[3:], "version 2"),
        (_valid()[:3] + bytes([0x80]) + _valid()[4:], "unknown envelope flags"),
        (_valid()[:4] + bytes([9]) + _valid()[5:], "unknown envelope target"),
        # Offsets: header 39 bytes, "u1" to 41, exclude count to 45, first id 47..79.
        (_valid()[:37] + struct.pack(">H", 500) + _valid()[39:], "truncated in an id"),
        (_valid()[:43], "truncated in its exclude list"),
        (_valid()[:41] + struct.pack(">I", 10**9) + _valid()[45:], "exclude list"),
        (_valid()[:46], "truncated in its exclude list"),
        (_valid()[:50], "truncated in an id"),
        (_valid()[:80], "truncated in its exclude list"),
        (pack(Target.ROOM, "r", b"\xff\xfe", origin=ORIGIN, stream=1, seq=1), "UTF-8"),
    ],
)
def test_malformed_envelopes_are_refused_with_a_reason(data: bytes, why: str) -> None:
    """Foreign, truncated, future-version or corrupt data raises InvalidEnvelope saying why."""
    with pytest.raises(InvalidEnvelope, match=why):
        unpack(data)


def test_id_with_invalid_utf8_is_refused() -> None:
    """An id whose bytes are not UTF-8 is refused, not decoded into garbage."""
    data = bytearray(pack(Target.ROOM, "ab", b"x", origin=ORIGIN, stream=1, seq=1))
    data[39:41] = b"\xff\xff"
    with pytest.raises(InvalidEnvelope, match="not valid UTF-8"):
        unpack(bytes(data))


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_parser(data: bytes) -> None:
    """Random bytes either parse or raise InvalidEnvelope; nothing else escapes."""
    with contextlib.suppress(InvalidEnvelope):
        unpack(data)


def test_pack_refuses_what_it_cannot_encode() -> None:
    """A wrong-sized origin or an id beyond 65535 bytes is refused at the origin."""
    with pytest.raises(ValueError, match="16 bytes"):
        pack(Target.ROOM, "r", b"", origin=b"x", stream=1, seq=1)
    with pytest.raises(InvalidEnvelope, match="does not fit"):
        pack(Target.ROOM, "r" * 70_000, b"", origin=ORIGIN, stream=1, seq=1)


def test_stream_counter_numbers_each_channel_from_one() -> None:
    """Each channel gets its own stream, numbered 1, 2, 3..."""
    counter = StreamCounter()
    assert counter.next("a") == (1, 1)
    assert counter.next("a") == (1, 2)
    assert counter.next("b") == (2, 1)
    assert counter.next("a") == (1, 3)
    assert len(counter) == 2


def test_stream_counter_forgets_the_least_recent_channel_and_starts_a_new_stream() -> None:
    """Past the limit the least recently used channel is forgotten; it restarts with a new
    stream id, never reusing an old one."""
    counter = StreamCounter(limit=2)
    counter.next("a")
    counter.next("b")
    counter.next("a")  # b is now the least recent
    counter.next("c")  # forgets b
    assert len(counter) == 2
    assert counter.next("a") == (1, 3)
    assert counter.next("b") == (4, 1)
    with pytest.raises(ValueError):
        StreamCounter(limit=0)


def test_gap_tracker_counts_holes_and_drops_duplicates() -> None:
    """In order: delivered; a jump: delivered with the hole counted; a repeat: dropped."""
    gaps = GapTracker()
    assert gaps.check("c", ORIGIN, 1, 5) == (Verdict.DELIVER, 0)  # baseline, mid-stream
    assert gaps.check("c", ORIGIN, 1, 6) == (Verdict.DELIVER, 0)
    assert gaps.check("c", ORIGIN, 1, 9) == (Verdict.DELIVER, 2)
    assert gaps.check("c", ORIGIN, 1, 9) == (Verdict.DUPLICATE, 0)
    assert gaps.check("c", ORIGIN, 1, 3) == (Verdict.DUPLICATE, 0)
    assert (gaps.missed, gaps.duplicates) == (2, 2)


def test_gap_tracker_counts_lost_messages_at_the_start_of_a_new_stream() -> None:
    """A newer stream from a known origin counts what was lost before its first message
    seen; an older stream's message is a late duplicate."""
    gaps = GapTracker()
    gaps.check("c", ORIGIN, 3, 10)
    assert gaps.check("c", ORIGIN, 7, 3) == (Verdict.DELIVER, 2)
    assert gaps.check("c", ORIGIN, 3, 11) == (Verdict.DUPLICATE, 0)


def test_gap_tracker_keeps_origins_and_channels_apart_and_forgets() -> None:
    """Origins and channels have separate histories; forgetting a channel resets it."""
    other = bytes(16)
    gaps = GapTracker(origins_per_channel=2)
    gaps.check("c", ORIGIN, 1, 1)
    gaps.check("c", other, 1, 50)
    gaps.check("d", ORIGIN, 1, 7)
    assert gaps.check("c", ORIGIN, 1, 2) == (Verdict.DELIVER, 0)
    assert len(gaps) == 2
    gaps.forget("c")
    assert len(gaps) == 1
    assert gaps.check("c", ORIGIN, 1, 40) == (Verdict.DELIVER, 0)  # new baseline
    third = b"\x01" * 16
    gaps.check("c", other, 1, 1)
    gaps.check("c", third, 1, 1)  # evicts ORIGIN's history on "c"
    assert gaps.check("c", ORIGIN, 1, 45) == (Verdict.DELIVER, 0)
    assert gaps.missed == 0
