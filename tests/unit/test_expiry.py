"""The token-expiry clock, pure: warn at expiry, close after the grace, refresh supersedes."""

from __future__ import annotations

import pytest

from roomcast.expiry import ExpiryClock, Step


def test_warn_at_expiry_then_expire_after_the_grace() -> None:
    """A connection is warned when its token expires and expired `grace` seconds later."""
    clock = ExpiryClock(grace=30)
    clock.set("c", 100)
    assert clock.next_due() == 100
    assert clock.due(99) == []
    assert clock.due(100) == [("c", Step.WARN)]
    assert clock.next_due() == 130
    assert clock.due(129) == []
    assert clock.due(131) == [("c", Step.EXPIRE)]
    assert len(clock) == 0 and clock.next_due() is None


def test_a_refresh_supersedes_the_old_deadline_even_after_the_warning() -> None:
    """A new token re-arms the connection: the old warning/close never fires."""
    clock = ExpiryClock(grace=10)
    clock.set("c", 100)
    clock.set("d", 100)
    assert sorted(clock.due(100)) == [("c", Step.WARN), ("d", Step.WARN)]
    clock.set("c", 200)  # refreshed during the grace
    assert clock.due(110) == [("d", Step.EXPIRE)]
    assert clock.next_due() == 200
    assert clock.due(200) == [("c", Step.WARN)]


def test_forget_and_tokens_without_expiry() -> None:
    """Forgotten connections and tokens without exp never fire; grace must be >= 0."""
    clock = ExpiryClock(grace=0)
    clock.set("c", 5)
    clock.forget("c")
    clock.set("d", None)
    assert clock.due(1000) == [] and clock.next_due() is None
    clock.set("e", 5)
    assert clock.due(5) == [("e", Step.WARN), ("e", Step.EXPIRE)]
    with pytest.raises(ValueError):
        ExpiryClock(grace=-1)


def test_a_deadline_that_is_not_finite_is_refused() -> None:
    """NaN would never come due and block every deadline behind it; infinity is refused too."""
    clock = ExpiryClock(grace=1)
    for deadline in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            clock.set("c", deadline)
    clock.set("d", 5)
    assert len(clock) == 1 and clock.due(5) == [("d", Step.WARN)]
