"""Who may do what in which room: one decision for both faces of roomcast.

``Rules.check(who, room, action)`` is the whole decision, in this order:

1. The room's namespace forbids the action for everyone: a client without a token in a
   namespace that is not ``anonymous``; a publish where ``publish`` is off; presence where
   ``presence`` is off.  Cause ``namespace_forbids``.
2. A personal room (a ``#`` in its name) belongs to the users listed after its last ``#``
   (``inbox#alice``, ``dm#alice,bob``): they may do there what the namespace allows, without
   any grant; anyone else is refused, whatever their token grants.  Cause ``personal_room``.
3. A token with the capability claim: what it grants, nothing more.  Without the claim: the
   namespace's ``allow``.  Cause ``not_granted``.

Limits that depend on the state of the hub (``max_members``, ``max_rooms_per_connection``) are
the caller's to apply with the namespace ``Rules.namespace(room)`` returns; their causes are
``room_full`` and ``too_many_rooms``.  Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from roomcast.history.positions import HistoryLimits, HistoryRule, history_for_all
from roomcast.rules.capabilities import Action, Capabilities, ClaimError
from roomcast.rules.namespaces import Namespace, Namespaces

__all__ = ["Cause", "Refusal", "Rules", "Who"]

PERSONAL_MARK = "#"
_PUBLISH, _PRESENCE = Action.PUBLISH, Action.PRESENCE  # (a global is read faster than a member)


class Cause(enum.StrEnum):
    """Why an action was refused: the stable ``cause`` of the client's ``error``."""

    NOT_GRANTED = "not_granted"
    NAMESPACE_FORBIDS = "namespace_forbids"
    PERSONAL_ROOM = "personal_room"
    ROOM_FULL = "room_full"
    TOO_MANY_ROOMS = "too_many_rooms"


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """A refused action: the stable cause and a sentence for the client."""

    cause: Cause
    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class Who:
    """The client as the rules see it.

    Attributes:
        user_id: Its user id (None: it named none).
        capabilities: What its token's claim grants; None without the claim (the namespace's
            ``allow`` applies).
        anonymous: Connected without a token to a server that takes tokens.
    """

    user_id: str | None = None
    capabilities: Capabilities | None = None
    anonymous: bool = False


def personal_owners(room: str) -> list[str] | None:
    """The users a personal room belongs to (``dm#alice,bob`` -> alice, bob); None for a room
    that is not personal."""
    if PERSONAL_MARK not in room:  # (most rooms: decided without allocating anything)
        return None
    return room.rpartition(PERSONAL_MARK)[2].split(",")


class Rules:
    """Namespaces and the capability claim's name, and the decisions they make.

    Args:
        namespaces: The rules per room-name prefix (default: every action allowed everywhere,
            as without rules, except other users' personal rooms).
        claim: The name of the token claim holding capabilities.
    """

    def __init__(self, namespaces: Namespaces | None = None, *, claim: str = "rooms") -> None:
        self.namespaces = namespaces or Namespaces()
        self.claim = claim
        self._parsed: dict[tuple[str, ...], tuple[dict[str, Any], Capabilities]] = {}
        """Parsed claims by their patterns: the claim itself, and its parse."""

    def namespace(self, room: str) -> Namespace:
        return self.namespaces.of(room)

    def who(self, user_id: str | None, claims: Mapping[str, Any] | None = None) -> Who:
        """The client behind a token's claims (None: connected without a token).

        Raises:
            ClaimError: the capability claim is malformed (the token is to be refused).
        """
        if claims is None:
            return Who(user_id, None, anonymous=True)
        if self.claim not in claims:
            return Who(user_id)
        # (A null claim is refused like any other malformed one: read as "no claim", it
        # would open every room the namespaces allow to a token meant to grant nothing.)
        return Who(user_id, self.capabilities(claims[self.claim]))

    def capabilities(self, claim: object) -> Capabilities:
        """The capabilities of a claim's value, parsed once per distinct value: tokens are
        minted per role, so thousands of clients carry the same claim, and sharing its parse
        saves each connection the parse and the objects the cyclic GC would walk.

        Raises:
            ClaimError: the claim is malformed.
        """
        if not isinstance(claim, Mapping):
            return Capabilities.from_claim(claim, name=self.claim)
        names = tuple(claim)
        known = self._parsed.get(names)
        if known is not None and known[0] == claim:  # (comparing is cheaper than hashing it)
            return known[1]
        parsed = Capabilities.from_claim(claim, name=self.claim)
        if known is None and len(self._parsed) >= MAX_DISTINCT_CLAIMS:  # the oldest goes
            del self._parsed[next(iter(self._parsed))]
        self._parsed[names] = (_copy(claim), parsed)
        return parsed

    def check(self, who: Who, room: str, action: Action) -> Refusal | None:
        """Why ``who`` may not do ``action`` in ``room``; None if it may."""
        return self.decide(room, action, who.user_id, who.capabilities, anonymous=who.anonymous)

    def decide(
        self,
        room: str,
        action: Action,
        user_id: str | None,
        capabilities: Capabilities | None = None,
        *,
        anonymous: bool = False,
    ) -> Refusal | None:
        """``check`` for a client given field by field: a server keeps no ``Who`` for the
        clients whose token has no claim (most of them) and makes none per command.  An
        allowed action allocates nothing."""
        namespace = self.namespaces.of(room)
        if anonymous and not namespace.anonymous:
            return Refusal(
                Cause.NAMESPACE_FORBIDS,
                f"{_where(namespace)} needs a token: connect with one to {action.value} here",
            )
        if action is _PUBLISH and not namespace.publish:
            return Refusal(
                Cause.NAMESPACE_FORBIDS,
                f"clients may not publish in {_where(namespace)} (the server publishes there)",
            )
        if action is _PRESENCE and not namespace.presence:
            return Refusal(Cause.NAMESPACE_FORBIDS, f"{_where(namespace)} serves no presence")
        owners = personal_owners(room)
        if owners is not None:
            if user_id is None or user_id not in owners:
                return Refusal(Cause.PERSONAL_ROOM, "another user's personal room")
            granted = action in namespace.allow
        elif capabilities is not None:
            granted = capabilities.allows(room, action)
        else:
            granted = action in namespace.allow
        if granted:
            return None
        return Refusal(Cause.NOT_GRANTED, f"{action.value} is not granted in this room")

    def revoked(self, who: Who, rooms: Iterable[str]) -> list[str]:
        """Of ``rooms``, those ``who`` may no longer be in (after a token refresh).  The
        server's ``$`` rooms are not the rules' to take away (no pattern grants them)."""
        return [
            room
            for room in rooms
            if not room.startswith("$") and self.check(who, room, Action.JOIN) is not None
        ]

    def history_rule(self, server: HistoryLimits | None) -> HistoryRule | None:
        """Which rooms keep history, and how much: each namespace's ``history_size`` and
        ``history_ttl`` over the server's ``server`` limits (None: no history by default).
        None when no room keeps any."""
        by_namespace: dict[str, HistoryLimits | None] = {}
        for namespace in self.namespaces:
            by_namespace[namespace.name] = _limits(namespace, server)
        if not any(by_namespace.values()):
            return None
        namespaces = self.namespaces
        default = by_namespace[namespaces.default.name]
        if not namespaces.named and default is not None:  # (asked at every publish)
            return history_for_all(default)

        def rule(room: str) -> HistoryLimits | None:
            if room.startswith("$"):
                return None
            return by_namespace[namespaces.of(room).name]

        return rule

    def room_authorizer(self) -> Callable[[Claimant, str], bool]:
        """A ``room_authorizer`` for ``AuthConnectionManager``: ``(identity, room) -> bool``
        with these rules' join decision (a malformed claim refuses)."""

        def authorize(identity: Claimant, room: str) -> bool:
            try:
                who = self.who(identity.user_id, identity.claims)
            except ClaimError:
                return False
            return self.check(who, room, Action.JOIN) is None

        return authorize


class Claimant(Protocol):
    """What the rules read of an ``Identity``."""

    @property
    def user_id(self) -> str: ...

    @property
    def claims(self) -> Mapping[str, Any]: ...


MAX_DISTINCT_CLAIMS = 4096
"""Distinct capability claims whose parse a ``Rules`` keeps."""


def _copy(claim: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a claim to compare later ones with (its lists copied: the caller's may
    change)."""
    return {
        name: list(value) if isinstance(value, list) else value for name, value in claim.items()
    }


def _limits(namespace: Namespace, server: HistoryLimits | None) -> HistoryLimits | None:
    size = namespace.history_size
    if size == 0 or (size is None and server is None):
        return None
    base = server or HistoryLimits()
    return HistoryLimits(
        size=base.size if size is None else size,
        ttl=base.ttl if namespace.history_ttl is None else namespace.history_ttl,
    )


def _where(namespace: Namespace) -> str:
    if namespace.name == "default":
        return "this room"
    return f"namespace {namespace.name!r}"
