"""Pure parts of the native transport."""

from __future__ import annotations

import pytest

from roomcast.serve.native import close_reply


@pytest.mark.parametrize(
    ("payload", "reply"),
    [
        (b"", 1000),
        (b"\x03", 1002),  # one byte: no room for a code
        ((1000).to_bytes(2, "big") + b"bye", 1000),
        ((1001).to_bytes(2, "big"), 1001),
        ((1011).to_bytes(2, "big"), 1011),
        ((3000).to_bytes(2, "big"), 3000),
        ((4999).to_bytes(2, "big"), 4999),
        ((999).to_bytes(2, "big"), 1002),
        ((1004).to_bytes(2, "big"), 1002),
        ((1005).to_bytes(2, "big"), 1002),  # "no status": never on the wire
        ((1006).to_bytes(2, "big"), 1002),
        ((1015).to_bytes(2, "big"), 1002),
        ((2999).to_bytes(2, "big"), 1002),
        ((5000).to_bytes(2, "big"), 1002),
        ((1000).to_bytes(2, "big") + b"\xff\xfe", 1007),
    ],
)
def test_close_frames_are_answered_per_rfc_6455(payload: bytes, reply: int) -> None:
    """Valid codes are echoed; empty closes get 1000; malformed or reserved codes 1002;
    a reason that is not UTF-8 1007."""
    assert close_reply(payload)[0] == reply
