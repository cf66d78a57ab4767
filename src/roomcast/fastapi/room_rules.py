"""``Rules`` applied to ``AuthConnectionManager``'s connections: what roomcast serve decides.

The decision itself is ``roomcast.rules``'s, shared with ``roomcast serve``; this module keeps
what the manager needs around it, so that both faces refuse the same things for the same
causes:

* the client as the rules see it (``Who``), parsed once per connection from its token's
  claims, and again at each token refresh;
* the join decision with the limits that depend on state (``max_rooms_per_connection`` from
  the connection's rooms, ``max_members`` from a member count the manager reads in Redis);
* presence watched only by members where the namespace says ``presence_for = "members"``;
* what a client is told when a refreshed token no longer grants rooms it is in (the message
  ``roomcast serve`` sends).

A manager without rules gets ``RoomRules(None)``, which allows everything and never reads the
claims, so apps that do not use rules see no change (a token may carry any ``rooms`` claim).
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from roomcast.auth import AuthenticationError, Identity
from roomcast.rules import Action, Cause, ClaimError, PresenceFor, Refusal, Rules, Who

__all__ = ["RoomRefused", "RoomRules", "revoked_message"]


_UNKNOWN = Refusal(Cause.NOT_GRANTED, "not connected here")


class RoomRefused(AuthenticationError):
    """The rules keep a valid identity out of a room (status 403).

    Raised by ``AuthConnectionManager.connect(room=...)`` (after the 403 went out) and by
    ``join_room``.  It is an ``AuthenticationError`` so that endpoints that already catch that
    keep working; ``cause`` says why in the words ``roomcast serve`` uses, for code that
    reacts differently to a full room than to a missing grant.

    Attributes:
        room: The room refused.
        cause: The stable cause (``not_granted``, ``personal_room``, ``room_full``...).
        reason: The sentence without the cause (the message is ``"reason (cause)"``).
    """

    def __init__(self, room: str, refusal: Refusal) -> None:
        super().__init__(f"{refusal.message} ({refusal.cause.value})", 403)
        self.room = room
        self.cause = refusal.cause
        self.reason = refusal.message


class RoomRules:
    """The rules of one manager, and the parsed claims of each of its connections.

    Args:
        rules: The rules; None allows every action in every room (no claim is read).
    """

    def __init__(self, rules: Rules | None) -> None:
        self.rules = rules
        self._who: dict[str, Who] = {}

    def who(self, identity: Identity) -> Who | None:
        """The client behind ``identity`` (None without rules).

        Raises:
            AuthenticationError: the capability claim is malformed (401, as a bad token: the
                backend that minted it has a bug that should show at once).
        """
        if self.rules is None:
            return None
        try:
            return self.rules.who(identity.user_id, identity.claims)
        except ClaimError as exc:
            raise AuthenticationError(str(exc), 401) from None

    def remember(self, conn_id: str, who: Who | None) -> None:
        if who is not None:
            self._who[conn_id] = who

    def of(self, conn_id: str) -> Who | None:
        """The view of a connection remembered at connect (None: no rules, or unknown)."""
        return self._who.get(conn_id)

    def forget(self, conn_id: str) -> None:
        self._who.pop(conn_id, None)

    def check(
        self, conn_id: str, room: str, action: Action, rooms: Collection[str]
    ) -> Refusal | None:
        """Why connection ``conn_id``, in ``rooms``, may not do ``action`` in ``room``."""
        rules = self.rules
        if rules is None:
            return None
        who = self._who.get(conn_id)
        if who is None:
            return _UNKNOWN
        refusal = rules.check(who, room, action)
        if refusal is not None or action is not Action.PRESENCE:
            return refusal
        namespace = rules.namespace(room)
        if namespace.presence_for is PresenceFor.MEMBERS and room not in rooms:
            return Refusal(Cause.NAMESPACE_FORBIDS, "presence here is for members: join first")
        return None

    def join_refusal(self, who: Who | None, room: str, rooms: Collection[str]) -> Refusal | None:
        """Why ``who``, in ``rooms``, may not join ``room``; the member cap aside (see
        ``max_members``), since counting members is I/O."""
        rules = self.rules
        if rules is None or room in rooms:
            return None
        if who is None:  # (never for a registered connection: fail closed all the same)
            return _UNKNOWN
        refusal = rules.check(who, room, Action.JOIN)
        if refusal is not None:
            return refusal
        namespace = rules.namespace(room)
        cap = namespace.max_rooms_per_connection
        if cap and sum(rules.namespace(r).name == namespace.name for r in rooms) >= cap:
            where = "this namespace" if namespace.name == "default" else namespace.name
            return Refusal(Cause.TOO_MANY_ROOMS, f"at most {cap} rooms of {where} per connection")
        return None

    def max_members(self, room: str) -> int:
        """The member cap of ``room`` (0: none)."""
        return 0 if self.rules is None else self.rules.namespace(room).max_members

    @staticmethod
    def full(cap: int, members: int) -> Refusal | None:
        """A ``room_full`` refusal if ``members`` fill ``cap``."""
        if cap and members >= cap:
            return Refusal(Cause.ROOM_FULL, f"the room is full ({cap} connections)")
        return None

    def renew(self, conn_id: str, who: Who | None, rooms: Collection[str]) -> dict[str, Any] | None:
        """Take ``who`` (from a refreshed token) as the connection's view; the revoked message
        for the rooms of ``rooms`` it no longer grants (to leave), None if it grants all."""
        if self.rules is None or who is None:
            return None
        self._who[conn_id] = who
        revoked = self.rules.revoked(who, sorted(rooms))
        if not revoked:
            return None
        first = self.rules.check(who, revoked[0], Action.JOIN)
        return revoked_message(revoked, first.cause if first is not None else Cause.NOT_GRANTED)


def revoked_message(rooms: list[str], cause: Cause = Cause.NOT_GRANTED) -> dict[str, Any]:
    """What a client is told when a refreshed token no longer grants rooms it was in: the
    message ``roomcast serve`` sends (without its ``ref_event_id``: here the app, not a client
    command, passed the token)."""
    return {
        "type": "revoked",
        "rooms": rooms,
        "cause": cause.value,
        "reason": "the refreshed token no longer grants these rooms; they were left",
    }
