"""The rate limiter, pure: a token bucket with strikes."""

from __future__ import annotations

import pytest

from roomcast.limits import RateLimit, Verdict


def test_burst_then_rate_then_refusals_then_cut_off() -> None:
    """A full bucket lets `burst` through at once; then one message per 1/rate seconds;
    refusals count strikes, a refill resets them, too many in a row cut the client off."""
    limit = RateLimit(rate=10, burst=3, strikes=3)
    tokens, stamp, strikes = 3.0, 0.0, 0

    def send(now: float) -> Verdict:
        nonlocal tokens, stamp, strikes
        verdict, tokens, stamp, strikes = limit.check(tokens, stamp, strikes, now)
        return verdict

    assert [send(0.0) for _ in range(4)] == [Verdict.ALLOW] * 3 + [Verdict.REFUSE]
    assert send(0.1) is Verdict.ALLOW and strikes == 0  # one token back, strikes reset
    assert [send(0.1) for _ in range(3)] == [Verdict.REFUSE, Verdict.REFUSE, Verdict.CUT_OFF]
    with pytest.raises(ValueError):
        RateLimit(rate=0, burst=1)
