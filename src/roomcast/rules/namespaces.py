"""Rules per room-name prefix.

A room's namespace is the part of its name before the first ``:`` (``chat`` for
``chat:lobby``).  Rooms without a ``:``, and rooms whose prefix names no configured namespace,
follow the ``default`` namespace, so a typing mistake in a room name never escapes the rules.
Each namespace says what a client may do there when its token carries no capability claim, and
what nobody may do there whatever the token says (publish from clients, watch presence), plus
its limits.  Built from plain mappings (a TOML file's tables, a dict in the library), checked
key by key so that a mistake names the key.  Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterator, Mapping
from typing import Any

from roomcast.rules.capabilities import ALL_ACTIONS, Action, parse_actions

__all__ = ["DEFAULT", "Namespace", "Namespaces", "PresenceFor", "RulesError"]

DEFAULT = "default"
"""The namespace of rooms without a ``:`` and of rooms of an unknown namespace."""


class RulesError(ValueError):
    """A namespace setting that cannot be used.

    Attributes:
        key: Where, as a dotted path (``namespaces.chat.max_members``).
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class PresenceFor(enum.StrEnum):
    """Who may watch a room's presence (with the ``presence`` action granted)."""

    MEMBERS = "members"
    """Only connections in the room (join ROOM, then ``$presence:ROOM``)."""
    ANYONE = "anyone"
    """Also connections that are not in the room."""


@dataclasses.dataclass(frozen=True, slots=True)
class Namespace:
    """The rules of one namespace.

    Attributes:
        name: The room-name prefix (``chat`` for ``chat:...``), or ``default``.
        allow: What a client may do here when its token has no capability claim (or on a
            server without tokens).  A claim, when present, replaces this.
        anonymous: Whether clients without a token may connect for this namespace and do
            ``allow`` here (on a server that takes tokens; without authentication nobody is
            anonymous: every client names itself).
        publish: Whether clients may publish here at all (the HTTP API always may).
        presence: Whether presence is served for these rooms at all.
        presence_for: Who may watch presence (``members`` or ``anyone``).
        max_members: Connections a room holds in one server process (0: no cap).
        max_rooms_per_connection: Rooms of this namespace one connection may be in (0: only
            the server-wide cap).
        history_size: Messages a room keeps (None: the server's setting; 0: no history).
        history_ttl: Seconds a room's messages are kept (None: the server's setting).
    """

    name: str = DEFAULT
    allow: frozenset[Action] = ALL_ACTIONS
    anonymous: bool = False
    publish: bool = True
    presence: bool = True
    presence_for: PresenceFor = PresenceFor.MEMBERS
    max_members: int = 0
    max_rooms_per_connection: int = 0
    history_size: int | None = None
    history_ttl: float | None = None


_FIELDS = {f.name for f in dataclasses.fields(Namespace)} - {"name"}


@dataclasses.dataclass(frozen=True, slots=True)
class Namespaces:
    """Every namespace, looked up by room name."""

    default: Namespace = Namespace()
    named: Mapping[str, Namespace] = dataclasses.field(default_factory=dict)

    def of(self, room: str) -> Namespace:
        """The namespace whose rules ``room`` follows."""
        if self.named:
            prefix, colon, _ = room.partition(":")
            if colon:
                return self.named.get(prefix, self.default)
        return self.default

    @property
    def anonymous(self) -> bool:
        """Whether any namespace lets clients without a token in."""
        return self.default.anonymous or any(n.anonymous for n in self.named.values())

    def __iter__(self) -> Iterator[Namespace]:
        yield self.default
        yield from self.named.values()

    @classmethod
    def from_mapping(cls, tables: Mapping[str, Any], *, where: str = "namespaces") -> Namespaces:
        """Namespaces from ``{name: {setting: value}}`` (``default`` for the default one).

        Raises:
            RulesError: an unknown setting, a value of the wrong type or out of range, a name
                that cannot be a prefix; the message names the key.
        """
        if not isinstance(tables, Mapping):
            raise RulesError(where, "expected a table of namespaces")
        default = Namespace()
        named: dict[str, Namespace] = {}
        for name, table in tables.items():
            key = f"{where}.{name}"
            if not isinstance(name, str) or not name or any(c in name for c in ":$#*"):
                raise RulesError(key, "a namespace name is non-empty, without ':', '$', '#', '*'")
            if not isinstance(table, Mapping):
                raise RulesError(key, "expected a table of settings")
            namespace = _namespace(name, table, key)
            if name == DEFAULT:
                default = namespace
            else:
                named[name] = namespace
        return cls(default, named)


def _namespace(name: str, table: Mapping[str, Any], where: str) -> Namespace:
    values: dict[str, Any] = {}
    for setting, value in table.items():
        key = f"{where}.{setting}"
        if setting not in _FIELDS:
            known = ", ".join(sorted(_FIELDS))
            raise RulesError(key, f"unknown setting (known: {known})")
        values[setting] = _PARSERS[setting](value, key)
    return Namespace(name=name, **values)


def _boolean(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise RulesError(key, f"expected true or false, not {value!r}")
    return value


def _count(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RulesError(key, f"expected a whole number, 0 or more, not {value!r}")
    return value


def _seconds(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise RulesError(key, f"expected a number of seconds above 0, not {value!r}")
    if not math.isfinite(value):
        raise RulesError(key, f"expected a finite number of seconds, not {value!r}")
    return float(value)


def _allow(value: object, key: str) -> frozenset[Action]:
    try:
        return parse_actions(value, example='["join", "history"]')
    except ValueError as exc:
        raise RulesError(key, str(exc)) from None


def _presence_for(value: object, key: str) -> PresenceFor:
    if value not in PresenceFor.__members__.values():
        raise RulesError(key, f"expected 'members' or 'anyone', not {value!r}")
    return PresenceFor(str(value))


_PARSERS: dict[str, Any] = {
    "allow": _allow,
    "anonymous": _boolean,
    "publish": _boolean,
    "presence": _boolean,
    "presence_for": _presence_for,
    "max_members": _count,
    "max_rooms_per_connection": _count,
    "history_size": _count,
    "history_ttl": _seconds,
}
