"""What a token grants: the capability claim, parsed once per connection.

The claim maps room patterns to actions::

    "rooms": {"chat:*": ["join", "publish", "presence", "history"], "news": ["join"]}

A pattern is a room name, in which ``*`` stands for any run of characters (none included):
``chat:*`` grants ``chat:lobby`` and ``chat:`` but not ``chatroom``; ``*`` alone grants every
room.  Matching is exact otherwise: case-sensitive, no Unicode normalisation (``café`` written
with a combining accent is another room), no other wildcard.  The server's own ``$`` rooms are
never granted by a pattern (presence is the ``presence`` action on the watched room).  Grants
add up: a room gets every action of every pattern that matches it.

The claim is checked when the token is: a claim that does not have this shape makes the token
invalid, so a typing mistake in the backend that mints tokens shows at once, not as rooms that
are silently never granted.  Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

__all__ = ["ALL_ACTIONS", "Action", "Capabilities", "ClaimError", "Pattern", "parse_actions"]


class Action(enum.StrEnum):
    """What a client may do with a room."""

    JOIN = "join"
    PUBLISH = "publish"
    PRESENCE = "presence"
    """See who is in the room (join ``$presence:ROOM``)."""
    HISTORY = "history"
    """Read the room's past messages (``{"type": "history"}``; a join ``since`` a position)."""

    # Enum's own hash is a Python call on the member's name: every grant lookup would pay
    # for it, and it disagrees with equality ("join" == Action.JOIN).  The value's hash is C.
    __hash__ = str.__hash__


ALL_ACTIONS = frozenset(Action)

MAX_PATTERNS = 1000
"""Entries a claim may hold: a token is signed, but its size is still bounded."""
MAX_PATTERN_LENGTH = 1024
"""Characters of one pattern."""
MAX_REMEMBERED_ROOMS = 1024
"""Rooms whose grant one ``Capabilities`` remembers (then it starts over)."""


class ClaimError(ValueError):
    """A capability claim that does not have the documented shape; the message says where."""


@dataclasses.dataclass(frozen=True, slots=True)
class Pattern:
    """A room name with ``*`` wildcards, split at them once so that matching is a few string
    comparisons."""

    text: str
    parts: tuple[str, ...]

    @classmethod
    def of(cls, text: str) -> Pattern:
        return cls(text, tuple(text.split("*")))

    def matches(self, room: str) -> bool:
        parts = self.parts
        if len(parts) == 1:
            return room == parts[0]
        head, tail = parts[0], parts[-1]
        if len(room) < len(head) + len(tail) or not room.startswith(head):
            return False
        if not room.endswith(tail):
            return False
        position, end = len(head), len(room) - len(tail)
        for middle in parts[1:-1]:
            found = room.find(middle, position, end)
            if found < 0:
                return False
            position = found + len(middle)
        return True


@dataclasses.dataclass(frozen=True, slots=True)
class Capabilities:
    """The rooms a token grants, and which actions in each."""

    exact: Mapping[str, frozenset[Action]]
    patterns: tuple[tuple[Pattern, frozenset[Action]], ...]
    granted: dict[str, frozenset[Action]] = dataclasses.field(
        default_factory=dict, compare=False, repr=False
    )
    """What the patterns grant per room, worked out once per room: one parse is shared by
    every client with the same claim, and they ask about the same rooms (bounded by
    ``MAX_REMEMBERED_ROOMS``)."""

    def allows(self, room: str, action: Action) -> bool:
        """Whether ``action`` on ``room`` is granted (never for a ``$`` room)."""
        if action in self.exact.get(room, ()):
            return True
        if not self.patterns or room.startswith("$"):
            return False
        granted = self.granted.get(room)
        if granted is None:
            granted = frozenset(
                a for pattern, actions in self.patterns if pattern.matches(room) for a in actions
            )
            if len(self.granted) >= MAX_REMEMBERED_ROOMS:
                self.granted.clear()
            self.granted[room] = granted
        return action in granted

    @classmethod
    def from_claim(cls, claim: object, *, name: str = "rooms") -> Capabilities:
        """Parse the value of the claim ``name``.

        Raises:
            ClaimError: not an object of pattern -> list of actions; says which entry.
        """
        if not isinstance(claim, Mapping):
            raise ClaimError(
                f"the '{name}' claim must be an object of room pattern -> list of actions"
            )
        if len(claim) > MAX_PATTERNS:
            raise ClaimError(f"the '{name}' claim has more than {MAX_PATTERNS} entries")
        exact: dict[str, frozenset[Action]] = {}
        patterns: list[tuple[Pattern, frozenset[Action]]] = []
        for text, listed in claim.items():
            where = f"the '{name}' claim's entry {str(text)[:40]!r}"
            if not isinstance(text, str) or not text or len(text) > MAX_PATTERN_LENGTH:
                raise ClaimError(
                    f"{where}: a pattern is a room name of 1 to {MAX_PATTERN_LENGTH} characters"
                )
            if text.startswith("$"):
                raise ClaimError(f"{where}: the server's $ rooms cannot be granted")
            actions = _actions(listed, where)
            if "*" in text:
                patterns.append((Pattern.of(text), actions))
            else:
                exact[text] = exact.get(text, frozenset()) | actions
        return cls(exact, tuple(patterns))


def _actions(listed: object, where: str) -> frozenset[Action]:
    try:
        return parse_actions(listed, example='["join", "publish"]')
    except ValueError as exc:
        raise ClaimError(f"{where}: {exc}") from None


def parse_actions(listed: object, *, example: str) -> frozenset[Action]:
    """A list of action names (``*``: all of them), as a token's claim or a namespace's
    ``allow`` gives it.

    Raises:
        ValueError: not a list, or an unknown name; says which (the caller says where).
    """
    if isinstance(listed, str) or not isinstance(listed, list | tuple | frozenset | set):
        raise ValueError(f"expected a list of actions, e.g. {example}")
    actions: set[Action] = set()
    for item in listed:
        if item == "*":
            actions.update(ALL_ACTIONS)
            continue
        try:
            actions.add(Action(item))
        except ValueError:
            known = ", ".join(a.value for a in Action)
            raise ValueError(f"unknown action {str(item)[:20]!r} (known: {known}, or *)") from None
    return frozenset(actions)
