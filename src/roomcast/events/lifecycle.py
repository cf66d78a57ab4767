"""The lifecycle rules in one process: counts, the debounce window, sequence numbers.

Changes of connections (``connect``, ``disconnect``, ``join``, ``leave``, ``publish``) go in;
``LifecycleEvent``\\ s come out, by these rules (the Redis store applies the same ones to the
cluster-wide counts, in its scripts):

- a user's first connection emits ``connect``; the last one's end emits ``disconnect`` once
  ``debounce`` seconds passed without a new connection of that user (one in the window
  cancels it, and emits no ``connect`` either: the user never looked offline);
- a user's first connection in a room emits ``join``; the last one leaving emits ``leave``
  after the same window (a rejoin within it cancels both);
- a room's first member emits ``occupied``; the last one leaving emits ``vacated`` after the
  window;
- a client's publish emits ``publish`` at once.

Events that wait for the window are emitted by ``due(now)`` in the order their causes
happened (a connection's ``leave``\\ s before its ``disconnect``).  ``seq`` is, per subject,
``max(last + 1, now in ms * 1000)``: an idle subject's last value is forgotten once the clock
has passed it, and its next events still take higher numbers (as long as a subject has fewer
than 1,000 events in a millisecond).  Clients without a user id count for
``occupied``/``vacated`` and emit ``publish`` but no user events.  Pure: no I/O, the clock
is an argument.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
from typing import Any

from roomcast.events.schema import Kind, LifecycleEvent

__all__ = ["Change", "LifecycleState", "Op", "next_seq"]


class Op(enum.StrEnum):
    CONNECT = "connect"
    DISCONNECT = "disconnect"
    JOIN = "join"
    LEAVE = "leave"
    PUBLISH = "publish"


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """Something a connection did (or that happened to it)."""

    op: Op
    connection: str
    user: str | None
    room: str | None = None
    reason: str | None = None
    code: int | None = None
    data: Any = None


def next_seq(last: int | None, now: float) -> int:
    """The next sequence number of a subject whose last one was ``last`` (None: forgotten)."""
    floor = int(now * 1000) * 1000
    return floor if last is None or last < floor else last + 1


@dataclasses.dataclass(slots=True)
class _Waiting:
    """An event that waits for the debounce window."""

    due: float
    order: int
    kind: Kind
    subject: str
    """What the window is about: ``user:U``, ``member:R\0U`` or ``room:R``."""
    time: float
    user: str | None
    room: str | None
    connection: str | None
    reason: str | None = None
    code: int | None = None


class LifecycleState:
    """The counts of one process's hub, and the events their changes make.

    Args:
        instance: This process's id (in every event, and the prefix of its ids).
        debounce: Seconds a ``disconnect``, ``leave`` or ``vacated`` waits for a comeback
            (0: emitted at once).
    """

    def __init__(self, instance: str, debounce: float) -> None:
        self.instance = instance
        self.debounce = debounce
        self._ids = itertools.count(1)
        self._order = itertools.count()
        self._users: dict[str, int] = {}
        self._members: dict[tuple[str, str], int] = {}
        self._rooms: dict[str, int] = {}
        self._waiting: dict[tuple[Kind, str], _Waiting] = {}
        self._seq: dict[str, int] = {}
        self._idle: set[str] = set()
        """Subjects with no state but their last seq, kept until the clock passes it."""

    @property
    def waiting(self) -> int:
        """Events waiting for their window."""
        return len(self._waiting)

    def next_due(self) -> float | None:
        """When the earliest waiting event is due (None: none waits)."""
        return min((w.due for w in self._waiting.values()), default=None)

    def apply(self, change: Change, now: float) -> list[LifecycleEvent]:
        """The events ``change`` makes at once (some wait: see ``due``)."""
        out: list[LifecycleEvent] = []
        user, room = change.user, change.room
        if change.op is Op.CONNECT:
            if user is not None and _up(self._users, user):
                self._arrive(out, Kind.CONNECT, Kind.DISCONNECT, f"user:{user}", change, now)
        elif change.op is Op.JOIN:
            assert room is not None
            if _up(self._rooms, room):
                self._arrive(out, Kind.OCCUPIED, Kind.VACATED, f"room:{room}", change, now)
            if user is not None and _up(self._members, (room, user)):
                key = f"member:{room}\0{user}"
                self._arrive(out, Kind.JOIN, Kind.LEAVE, key, change, now)
        elif change.op is Op.LEAVE:
            assert room is not None
            if user is not None and _down(self._members, (room, user)):
                self._depart(out, Kind.LEAVE, f"member:{room}\0{user}", change, now)
            if _down(self._rooms, room):
                self._depart(out, Kind.VACATED, f"room:{room}", change, now)
        elif change.op is Op.DISCONNECT:
            if user is not None and _down(self._users, user):
                self._depart(out, Kind.DISCONNECT, f"user:{user}", change, now)
        else:
            subject = _sequenced(Kind.PUBLISH, change)
            out.append(self._event(Kind.PUBLISH, subject, now, change, data=change.data))
        return out

    def due(self, now: float, *, all_of_them: bool = False) -> list[LifecycleEvent]:
        """The waiting events whose window ended by ``now`` (or every one, for a process
        that stops), in the order of their causes."""
        self._forget_idle(now)
        ready = sorted(
            (w for w in self._waiting.values() if all_of_them or w.due <= now),
            key=lambda w: (w.due, w.order),
        )
        out = []
        for waiting in ready:
            del self._waiting[(waiting.kind, waiting.subject)]
            out.append(self._emit(waiting, now))
        return out

    def _arrive(
        self,
        out: list[LifecycleEvent],
        kind: Kind,
        opposite: Kind,
        subject: str,
        change: Change,
        now: float,
    ) -> None:
        """A first arrival: cancels the opposite event if it still waits, else is an event."""
        if self._waiting.pop((opposite, subject), None) is None:
            data = change.data if kind is Kind.CONNECT else None
            out.append(self._event(kind, _sequenced(kind, change), now, change, data=data))

    def _depart(
        self, out: list[LifecycleEvent], kind: Kind, subject: str, change: Change, now: float
    ) -> None:
        waiting = _Waiting(
            now + self.debounce,
            next(self._order),
            kind,
            subject,
            now,
            change.user,
            change.room if kind is not Kind.DISCONNECT else None,
            change.connection,
            change.reason if kind is Kind.DISCONNECT else None,
            change.code if kind is Kind.DISCONNECT else None,
        )
        if self.debounce > 0:
            self._waiting[(kind, subject)] = waiting
        else:
            out.append(self._emit(waiting, now))

    def _event(
        self, kind: Kind, subject: str, now: float, change: Change, data: Any = None
    ) -> LifecycleEvent:
        room = None if kind is Kind.CONNECT else change.room
        return LifecycleEvent(
            kind=kind,
            id=f"{self.instance}-{next(self._ids)}",
            time=now,
            seq=self._next_seq(subject, now),
            user=None if kind in (Kind.OCCUPIED,) else change.user,
            room=room,
            connection=change.connection,
            data=data,
            instance=self.instance,
        )

    def _emit(self, waiting: _Waiting, now: float) -> LifecycleEvent:
        return LifecycleEvent(
            kind=waiting.kind,
            id=f"{self.instance}-{next(self._ids)}",
            time=waiting.time,
            seq=self._next_seq(
                f"room:{waiting.room}" if waiting.kind is Kind.VACATED else f"user:{waiting.user}",
                now,
                forget=waiting.kind is not Kind.LEAVE,
            ),
            user=None if waiting.kind is Kind.VACATED else waiting.user,
            room=waiting.room,
            connection=waiting.connection,
            reason=waiting.reason,
            code=waiting.code,
            instance=self.instance,
        )

    def _next_seq(self, subject: str, now: float, forget: bool = False) -> int:
        seq = next_seq(self._seq.get(subject), now)
        self._seq[subject] = seq
        if forget:  # the subject went idle: its last seq goes once the clock is past it
            self._idle.add(subject)
        else:
            self._idle.discard(subject)
        return seq

    def _forget_idle(self, now: float) -> None:
        floor = int(now * 1000) * 1000
        for subject in [s for s in self._idle if self._seq.get(s, 0) < floor]:
            self._idle.discard(subject)
            del self._seq[subject]


def _sequenced(kind: Kind, change: Change) -> str:
    """Whose ``seq`` an event takes: the room's for occupied/vacated (and a publish without a
    user), else the user's."""
    if kind in (Kind.OCCUPIED, Kind.VACATED) or change.user is None:
        return f"room:{change.room}"
    return f"user:{change.user}"


def _up(counts: dict[Any, int], key: Any) -> bool:
    """Count one more; True if it was the first."""
    count = counts.get(key, 0) + 1
    counts[key] = count
    return count == 1


def _down(counts: dict[Any, int], key: Any) -> bool:
    """Count one fewer; True if it was the last (the key is forgotten)."""
    count = counts.get(key, 0) - 1
    if count > 0:
        counts[key] = count
        return False
    counts.pop(key, None)
    return count == 0
