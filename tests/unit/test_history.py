"""Room history kept in one process: positions, bounds, and what can be recovered."""

from __future__ import annotations

import pytest

from roomcast.history.memory import MemoryHistory
from roomcast.history.positions import (
    EMPTY,
    HistoryLimits,
    Position,
    history_for_all,
    positioned,
    recoverable,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def store(size: int = 3, ttl: float = 60.0, **options: object) -> tuple[MemoryHistory, Clock]:
    clock = Clock()
    epochs = iter(f"e{n}" for n in range(1, 1000))
    history = MemoryHistory(
        history_for_all(HistoryLimits(size, ttl)),
        clock=clock,
        epochs=lambda: next(epochs),
        **options,  # type: ignore[arg-type]
    )
    return history, clock


def test_offsets_count_from_one_within_an_epoch_and_rooms_are_separate() -> None:
    history, _ = store()
    assert history.position("a") == EMPTY
    assert [history.append("a", b"{}") for _ in range(3)] == [
        Position("e1", 1),
        Position("e1", 2),
        Position("e1", 3),
    ]
    assert history.append("b", b"{}") == Position("e2", 1)
    assert history.position("a") == Position("e1", 3)


def test_reserved_rooms_keep_nothing() -> None:
    history, _ = store()
    assert history.append("$stats", b"{}") is None
    assert history.position("$stats") is None
    assert history.read("$stats", None, 10) is None


def test_a_read_since_a_position_gets_exactly_what_came_after() -> None:
    history, _ = store(size=10)
    for n in range(1, 6):
        history.append("a", b'{"n":%d}' % n)
    page = history.read("a", Position("e1", 2), 10)
    assert page is not None and page.recovered
    assert (page.first, page.payloads) == (3, [b'{"n":3}', b'{"n":4}', b'{"n":5}'])
    assert page.position == Position("e1", 5)
    up_to_date = history.read("a", Position("e1", 5), 10)
    assert up_to_date is not None and up_to_date.recovered and up_to_date.payloads == []
    limited = history.read("a", Position("e1", 0), 2)
    assert limited is not None and limited.payloads == [b'{"n":1}', b'{"n":2}']
    latest = history.read("a", None, 2)
    assert latest is not None and (latest.first, latest.payloads) == (4, [b'{"n":4}', b'{"n":5}'])


def test_what_the_history_no_longer_holds_is_not_recovered() -> None:
    history, _ = store(size=3)
    for _ in range(5):
        history.append("a", b"{}")  # keeps offsets 3, 4, 5
    assert history.read("a", Position("e1", 2), 10).recovered  # type: ignore[union-attr]
    gone = history.read("a", Position("e1", 1), 10)
    assert gone is not None and not gone.recovered and gone.payloads == []
    assert gone.position == Position("e1", 5)
    other_epoch = history.read("a", Position("zz", 4), 10)
    assert other_epoch is not None and not other_epoch.recovered
    ahead = history.read("a", Position("e1", 9), 10)  # a position the room never reached
    assert ahead is not None and not ahead.recovered


def test_offset_zero_recovers_in_any_epoch_while_the_first_message_is_kept() -> None:
    history, _ = store(size=3)
    history.append("a", b"{}")
    history.append("a", b"{}")
    page = history.read("a", Position("", 0), 10)
    assert page is not None and page.recovered and page.first == 1 and len(page.payloads) == 2
    for _ in range(3):
        history.append("a", b"{}")
    assert not history.read("a", Position("", 0), 10).recovered  # type: ignore[union-attr]


def test_messages_older_than_the_ttl_go_and_a_silent_room_starts_a_new_epoch() -> None:
    history, clock = store(size=10, ttl=60)
    history.append("a", b"{}")
    clock.now += 30
    history.append("a", b"{}")
    clock.now += 40  # the first is 70 s old, the second 40 s
    page = history.read("a", Position("e1", 1), 10)
    assert page is not None and page.recovered and page.first == 2
    assert not history.read("a", Position("e1", 0), 10).recovered  # type: ignore[union-attr]
    clock.now += 61  # silent for longer than the ttl: the history is over
    assert history.position("a") == EMPTY
    assert history.append("a", b"{}") == Position("e2", 1)
    assert not history.read("a", Position("e1", 2), 10).recovered  # type: ignore[union-attr]


def test_the_store_stays_within_its_bytes_and_evicts_the_least_recently_published() -> None:
    history, _ = store(size=100, max_bytes=10_000)
    payload = b"{" + b" " * 998 + b"}"
    for room in ("old", "mid", "new"):
        for _ in range(3):
            history.append(room, payload)
    assert history.size_bytes <= 10_000
    assert history.evicted_rooms >= 1
    assert history.position("old") == EMPTY  # the least recently published went first
    assert history.position("new").offset == 3  # type: ignore[union-attr]
    for _ in range(50):  # one room alone cannot go over the budget either
        history.append("new", payload)
    assert history.size_bytes <= 10_000


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"a":1}', b'{"a":1,"offset":7,"epoch":"ab12"}'),
        (b"{}", b'{"offset":7,"epoch":"ab12"}'),
        (b"[1]", None),
        (b'"text"', None),
    ],
)
def test_a_position_is_spliced_into_a_json_object_without_decoding_it(
    payload: bytes, expected: bytes | None
) -> None:
    assert positioned(payload, Position("ab12", 7)) == expected


def test_recoverable_rules() -> None:
    current = Position("e", 10)
    assert recoverable(Position("e", 4), current, oldest=5)
    assert not recoverable(Position("e", 3), current, oldest=5)
    assert recoverable(Position("e", 10), current, oldest=11)
    assert not recoverable(Position("e", 11), current, oldest=5)
    assert not recoverable(Position("f", 6), current, oldest=5)
    assert recoverable(Position("f", 0), current, oldest=1)


@pytest.mark.parametrize(
    "since",
    [
        None,
        [],
        {"epoch": 1, "offset": 1},
        {"epoch": "e", "offset": -1},
        {"epoch": "e"},
        {"epoch": "e", "offset": True},
        {"epoch": "x" * 65, "offset": 1},
    ],
)
def test_a_bad_since_is_refused_with_what_is_wrong(since: object) -> None:
    with pytest.raises(ValueError, match="since"):
        Position.parse(since)


def test_limits_must_be_usable() -> None:
    with pytest.raises(ValueError):
        HistoryLimits(0, 10)
    with pytest.raises(ValueError):
        HistoryLimits(10, 0)
