"""The client's reconnection backoff."""

from __future__ import annotations

import pytest

from roomcast.client import Backoff


def test_delays_double_up_to_the_maximum_minus_jitter() -> None:
    """Attempt n waits min(maximum, initial * factor ** (n - 1)), less up to jitter of it."""
    backoff = Backoff()
    assert [backoff.delay(n, draw=0) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 15, 15]
    assert backoff.delay(1, draw=0.999) == pytest.approx(0.25, abs=0.001)
    for attempt in range(1, 20):
        ceiling = min(15, 0.5 * 2 ** (attempt - 1))
        assert ceiling / 2 <= backoff.delay(attempt) <= ceiling
    assert backoff.delay(100_000) <= 15  # no overflow


def test_max_attempts() -> None:
    assert not Backoff().gives_up(10**6)
    limited = Backoff(max_attempts=2)
    assert [limited.gives_up(n) for n in (1, 2, 3)] == [False, False, True]


@pytest.mark.parametrize(
    "arguments",
    [{"initial": -1}, {"factor": 0.5}, {"jitter": 1.5}, {"maximum": -1}],
)
def test_nonsense_is_refused(arguments: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"backoff|jitter"):
        Backoff(**arguments)  # type: ignore[arg-type]
