"""What one instance holds: its connections counted per subject, and what Redis must hear.

The Redis lifecycle store counts *instances* per subject (``user:U``, ``member:R\\0U``,
``room:R``), not connections: a user's second tab on the same instance changes nothing
cluster-wide, so it should cost Redis nothing.  ``Holdings`` counts this instance's
connections in memory (the same ``_up``/``_down`` rules as ``LifecycleState``) and turns each
change into the *op code* the apply script needs -- which subjects this instance starts or
stops holding -- or into nothing at all.

It is also what this instance restores from: after its part in Redis was purged (it was
taken for dead) or lost (Redis restarted), ``target`` says what Redis should show for it,
given the changes still queued.  Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from roomcast.events.lifecycle import Change, Op

__all__ = ["Holdings", "changed_subjects"]


def user_subject(user: str) -> str:
    return f"user:{user}"


def member_subject(room: str, user: str) -> str:
    return f"member:{room}\0{user}"


def room_subject(room: str) -> str:
    return f"room:{room}"


class Holdings:
    """Connections of this instance per subject."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    @property
    def held(self) -> set[str]:
        """The subjects this instance holds (at least one connection each)."""
        return set(self._counts)

    def record(self, change: Change) -> str | None:
        """Count ``change``; the apply script's op code for it, or None if Redis need not
        hear of it (a second connection of a user here, a leave of a room never joined)."""
        user, room, op = change.user, change.room, change.op
        if op is Op.PUBLISH:
            return "p"
        if op is Op.CONNECT or op is Op.DISCONNECT:
            if user is None:
                return None
            if op is Op.CONNECT:
                return "c" if self._up(user_subject(user)) else None
            return "d" if self._down(user_subject(user)) else None
        if room is None:
            raise ValueError(f"a {op.value} needs a room")
        code = "j" if op is Op.JOIN else "l"
        if op is Op.JOIN:
            if self._up(room_subject(room)):
                code += "r"
            if user is not None and self._up(member_subject(room, user)):
                code += "m"
        else:
            if user is not None and self._down(member_subject(room, user)):
                code += "m"
            if self._down(room_subject(room)):
                code += "r"
        return code if len(code) > 1 else None

    def target(self, queued: Iterable[tuple[Change, str]]) -> set[str]:
        """What Redis should show this instance holding before ``queued`` (recorded, not yet
        written) is applied: a subject whose first queued op is an arrival was not held."""
        held = self.held
        first: dict[str, bool] = {}
        for change, code in queued:
            for subject, arrives in changed_subjects(change, code):
                first.setdefault(subject, arrives)
        for subject, arrives in first.items():
            if arrives:
                held.discard(subject)
            else:
                held.add(subject)
        return held

    def _up(self, subject: str) -> bool:
        count = self._counts.get(subject, 0) + 1
        self._counts[subject] = count
        return count == 1

    def _down(self, subject: str) -> bool:
        count = self._counts.get(subject, 0) - 1
        if count > 0:
            self._counts[subject] = count
            return False
        self._counts.pop(subject, None)
        return count == 0


def changed_subjects(change: Change, code: str) -> list[tuple[str, bool]]:
    """The subjects an op code changes, each with True for an arrival."""
    user, room = change.user, change.room
    kind = code[0]
    if kind in "cd":
        assert user is not None
        return [(user_subject(user), kind == "c")]
    if kind == "p":
        return []
    assert room is not None
    out = []
    if "r" in code:
        out.append((room_subject(room), kind == "j"))
    if "m" in code:
        assert user is not None
        out.append((member_subject(room, user), kind == "j"))
    return out
