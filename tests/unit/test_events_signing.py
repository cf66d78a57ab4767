"""Webhook signatures: what verify accepts and what it refuses, and why."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from roomcast.events.signing import (
    DEFAULT_TOLERANCE,
    SignatureError,
    sign,
    signature_header,
    verify,
)

SECRET = b"whsec-current"
OLD_SECRET = b"whsec-previous"
BODY = b'{"events":[{"type":"connect","id":"a1","time":1.0,"seq":1,"user":"ann"}]}'
NOW = 1765000000


def test_sign_is_hmac_sha256_over_the_timestamp_a_dot_and_the_body() -> None:
    """The MAC anyone can recompute with the standard library."""
    expected = hmac.new(SECRET, b"1765000000." + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, NOW, BODY) == expected


def test_the_header_carries_the_time_and_one_mac_per_secret() -> None:
    """``t=<unix seconds>,v1=<hex>`` with one ``v1`` per secret, the current one first."""
    header = signature_header([SECRET, OLD_SECRET], BODY, timestamp=NOW)
    assert header == f"t={NOW},v1={sign(SECRET, NOW, BODY)},v1={sign(OLD_SECRET, NOW, BODY)}"


def test_a_fresh_header_verifies() -> None:
    """Signed now, checked now: accepted, and the timestamp is returned."""
    header = signature_header([SECRET], BODY)
    stamp = verify(SECRET, BODY, header)
    assert header.startswith(f"t={stamp},")


def test_a_tampered_body_is_refused() -> None:
    """One byte changed after signing: refused."""
    header = signature_header([SECRET], BODY, timestamp=NOW)
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, BODY.replace(b"ann", b"bob"), header, now=NOW)


def test_a_changed_timestamp_is_refused() -> None:
    """The timestamp is under the MAC: moving it forward (to replay later) breaks the MAC."""
    mac = sign(SECRET, NOW, BODY)
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, BODY, f"t={NOW + 600},v1={mac}", now=NOW + 600)


@pytest.mark.parametrize("age", [DEFAULT_TOLERANCE + 1, -(DEFAULT_TOLERANCE + 1)])
def test_an_old_or_future_timestamp_is_refused(age: float) -> None:
    """A correct MAC outside the tolerance of the receiver's clock: refused as a replay."""
    header = signature_header([SECRET], BODY, timestamp=NOW)
    with pytest.raises(SignatureError, match="replayed"):
        verify(SECRET, BODY, header, now=NOW + age)
    assert verify(SECRET, BODY, header, now=NOW + age, tolerance=abs(age)) == NOW


def test_another_secret_is_refused() -> None:
    """A MAC made with a secret the receiver does not hold: refused."""
    header = signature_header([b"someone-else"], BODY, timestamp=NOW)
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, BODY, header, now=NOW)


def test_during_a_rotation_either_secret_verifies() -> None:
    """A header signed with the new and the old secret passes a receiver holding either."""
    header = signature_header([SECRET, OLD_SECRET], BODY, timestamp=NOW)
    assert verify(SECRET, BODY, header, now=NOW) == NOW
    assert verify(OLD_SECRET, BODY, header, now=NOW) == NOW


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (None, "no Roomcast-Signature"),
        ("", "no Roomcast-Signature"),
        ("v1=abc", "needs t= and v1="),
        (f"t={NOW}", "needs t= and v1="),
        ("t=yesterday,v1=abc", "not a whole number"),
    ],
)
def test_a_missing_or_malformed_header_is_refused(header: str | None, why: str) -> None:
    """No header, no timestamp, no MAC, or a timestamp that is not a number: refused."""
    with pytest.raises(SignatureError, match=why):
        verify(SECRET, BODY, header, now=NOW)


def test_spaces_and_unknown_schemes_in_the_header_are_tolerated() -> None:
    """Parts are trimmed, and schemes other than v1 are skipped (room for a v2)."""
    header = f"t={NOW}, v0=old, v1={sign(SECRET, NOW, BODY)}"
    assert verify(SECRET, BODY, header, now=NOW) == NOW
