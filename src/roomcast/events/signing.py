"""Webhook signatures: HMAC-SHA256 over a timestamp and the body, replay-safe.

The header ``Roomcast-Signature: t=1765000000,v1=5257a869...`` carries the Unix time of the
delivery attempt and ``hex(HMAC-SHA256(secret, f"{t}.".encode() + body))``.  A receiver
recomputes the MAC over the raw body it received, compares in constant time, and refuses a
``t`` further than its tolerance from its own clock (default 300 s), so a captured delivery
cannot be replayed later.  During a secret rotation the header may carry several ``v1=``
values (one per secret); one match suffices.  Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence

__all__ = ["HEADER", "SignatureError", "sign", "signature_header", "verify"]

HEADER = "Roomcast-Signature"
DEFAULT_TOLERANCE = 300.0


class SignatureError(ValueError):
    """A webhook delivery whose signature does not hold; the message says why."""


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The hex MAC of ``body`` at ``timestamp``."""
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secrets: Sequence[bytes], body: bytes, timestamp: int | None = None) -> str:
    """The header's value for ``body``, signed with each of ``secrets`` (the first is the
    current one; others during a rotation)."""
    stamp = int(time.time()) if timestamp is None else timestamp
    return ",".join([f"t={stamp}", *(f"v1={sign(s, stamp, body)}" for s in secrets)])


def verify(
    secret: bytes,
    body: bytes,
    header: str | None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> int:
    """Check a delivery; returns its timestamp.

    Raises:
        SignatureError: no header, a malformed one, a timestamp outside ``tolerance`` of
            ``now``, or no ``v1`` that matches ``body`` (tampered, or another secret).
    """
    if not header:
        raise SignatureError(f"no {HEADER} header")
    stamp: int | None = None
    macs: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                stamp = int(value)
            except ValueError:
                raise SignatureError("the timestamp is not a whole number") from None
        elif key == "v1":
            macs.append(value)
    if stamp is None or not macs:
        raise SignatureError(f"the {HEADER} header needs t= and v1=")
    current = time.time() if now is None else now
    if abs(current - stamp) > tolerance:
        raise SignatureError(f"the timestamp is {current - stamp:+.0f} s from now (replayed?)")
    expected = sign(secret, stamp, body)
    if not any(hmac.compare_digest(expected, mac) for mac in macs):
        raise SignatureError("the signature does not match the body")
    return stamp
