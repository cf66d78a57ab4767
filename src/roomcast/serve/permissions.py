"""The room rules (``roomcast.rules``) applied to ``roomcast serve``'s clients.

Who a client is, as the rules see it, is read from its token once, at the upgrade, and kept
with its connection only when it says more than the user id: a capability claim, or no token
at all (an anonymous client).  A client of a server without rules, or whose token has no
claim, keeps nothing more than before, and each check is a few comparisons that allocate
nothing when the action is allowed.  Checks run once per command (a publish is checked once,
not per recipient), never per delivered message.

Besides the pure decision, this module applies the limits that depend on the hub's state
(``max_members``, ``max_rooms_per_connection``), counts refusals for ``/metrics`` and takes
rooms away from a client whose refreshed token no longer grants them.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from roomcast.auth import Identity
from roomcast.connection import Connection
from roomcast.errors import CloseCode
from roomcast.frame import encode
from roomcast.hub import Hub
from roomcast.logbudget import EventLog
from roomcast.messages import preview
from roomcast.presence.feed import RESERVED_PREFIX, STATS_ROOM, watched_room
from roomcast.rules import Action, Cause, Namespace, PresenceFor, Refusal, Rules, Who
from roomcast.rules.rooms import PERSONAL_MARK
from roomcast.serve.config import ServerConfig
from roomcast.serve.metrics import ServerCounters

__all__ = ["ANONYMOUS", "CONNECT_DATA", "WHO", "Permissions", "close_code"]

WHO = "roomcast.who"
"""The key of a connection's ``Who`` in its metadata (absent: its user id says it all)."""

CONNECT_DATA = "roomcast.connect_data"
"""The key of the connect hook's ``data`` in a connection's metadata (absent: none); sent to
the join hook, and with the lifecycle events."""

ANONYMOUS = Who(anonymous=True)
"""Every client connected without a token to a server that takes tokens (one shared object)."""


def close_code(refusal: Refusal) -> CloseCode:
    """The ``code`` of a refusal's ``error``: 1013 (try again later) for a full room, which
    may have room later; 1008 (policy) for the rest, which will not change by retrying."""
    if refusal.cause is Cause.ROOM_FULL:
        return CloseCode.TRY_AGAIN_LATER
    return CloseCode.POLICY_VIOLATION


class Permissions:
    """Decides what each client of one server may do, and counts what it refuses.

    Args:
        config: ``rules`` (None: the default namespace only) and ``capabilities_claim``, which
            names the claim whatever claim name ``rules`` was built with.
        hub: Room sizes (``max_members``); where revoked rooms are left.
        counters: ``refusals`` is counted here.
        events: Where revocations are logged, within the budget.
    """

    def __init__(
        self, config: ServerConfig, hub: Hub, counters: ServerCounters, events: EventLog
    ) -> None:
        rules, claim = config.rules, config.capabilities_claim
        if rules is None or rules.claim != claim:
            rules = Rules(None if rules is None else rules.namespaces, claim=claim)
        self.rules = rules
        self._hub = hub
        self._counters = counters
        self._events = events
        self._plain = not rules.namespaces.named and rules.namespaces.default == Namespace()
        self._limited = any(n.max_members or n.max_rooms_per_connection for n in rules.namespaces)

    @property
    def anonymous(self) -> bool:
        """Whether clients without a token may connect (some namespace lets them in)."""
        return self.rules.namespaces.anonymous

    def who(self, identity: Identity | None) -> Who | None:
        """What to keep of a client proven by ``identity`` (None: connected without a token);
        None when its user id says it all.

        Raises:
            ClaimError: the token's capability claim is malformed (the token is refused).
        """
        if identity is None:
            return ANONYMOUS
        if self.rules.claim not in identity.claims:
            return None
        return self.rules.who(identity.user_id, identity.claims)

    def check(self, connection: Connection, room: str, action: Action) -> Refusal | None:
        """Why ``connection`` may not do ``action`` in ``room`` (None: it may); a refusal
        is counted.  A join is also held to the namespace's limits."""
        who = connection.metadata.get(WHO)
        if who is None and self._plain and PERSONAL_MARK not in room:
            return None  # (no rules, no claim: only personal rooms are ever refused)
        return self.check_for(who, connection.user_id, connection.rooms, room, action)

    def check_for(
        self,
        who: Who | None,
        user_id: str | None,
        rooms: Collection[str],
        room: str,
        action: Action,
    ) -> Refusal | None:
        """``check`` for a client that may have no connection yet (``/ws/ROOM``): ``who`` as
        kept, its ``user_id``, the ``rooms`` it is in."""
        if who is None:
            refusal = self.rules.decide(room, action, user_id)
        else:
            refusal = self.rules.decide(
                room, action, who.user_id, who.capabilities, anonymous=who.anonymous
            )
        if refusal is None and self._limited and action is Action.JOIN and room not in rooms:
            refusal = self._limits(rooms, room)
        if refusal is not None:
            key = (refusal.cause.value, action.value)
            self._counters.refusals[key] = self._counters.refusals.get(key, 0) + 1
        return refusal

    def _limits(self, rooms: Collection[str], room: str) -> Refusal | None:
        namespace = self.rules.namespace(room)
        cap = namespace.max_members
        if cap and self._hub.room_size(room) >= cap:
            return Refusal(
                Cause.ROOM_FULL, f"room {preview(room)} is full ({cap} connections here)"
            )
        cap = namespace.max_rooms_per_connection
        if cap:
            of = self.rules.namespace
            held = sum(1 for r in rooms if not r.startswith(RESERVED_PREFIX) and of(r) is namespace)
            if held >= cap:
                where = "this namespace" if namespace.name == "default" else namespace.name
                return Refusal(
                    Cause.TOO_MANY_ROOMS, f"at most {cap} rooms of {where} per connection"
                )
        return None

    def join_refusal(
        self, connection: Connection, room: str, *, stats: bool, presence: bool
    ) -> Refusal | str | None:
        """Why ``connection`` may not join ``room`` (None: it may): the rules for a room; for
        the server's ``$`` rooms, whether it serves them (``stats``: ``$stats``; ``presence``:
        ``$presence:R``) and the rules of R's presence.  A string is a refusal of the
        server's, without a cause."""
        if not room.startswith(RESERVED_PREFIX):
            return self.check(connection, room, Action.JOIN)
        if room == STATS_ROOM and stats:
            return None
        watched = watched_room(room)
        if watched is None or not presence:
            return f"room {preview(room)} is reserved"
        if watched.startswith(RESERVED_PREFIX):
            return f"the presence of {preview(watched)} is not served"
        refusal = self.check(connection, watched, Action.PRESENCE)
        if refusal is not None or watched in connection.rooms:
            return refusal
        if self.watch_needs_membership(watched):
            return f"join {preview(watched)} first"
        return None

    def may_replay(self, connection: Connection, room: str) -> bool:
        """Whether a join of ``room`` ``since`` a position may replay what was missed (the
        ``history`` action).  Without it the client still joins, told ``"recovered": false``
        as when the history is lost: the bundled clients rejoin ``since`` after every
        reconnect, and a refusal would drop the room from under them."""
        return room.startswith(RESERVED_PREFIX) or (
            self.check(connection, room, Action.HISTORY) is None
        )

    def watch_needs_membership(self, room: str) -> bool:
        """Whether watching ``room``'s presence needs being in it (``presence_for``)."""
        return self.rules.namespace(room).presence_for is PresenceFor.MEMBERS

    def reassign(self, connection: Connection, who: Who | None, ref_event_id: str) -> None:
        """A refreshed token proved ``who``: keep it, and take away the rooms it no longer
        grants (and the watch of their presence, or of any room whose presence it no longer
        grants), telling the client once which and why::

            {"type": "revoked", "rooms": [...], "cause": "not_granted", "reason": "...",
             "ref_event_id": "<the auth command's event_id>"}
        """
        if who is None:
            connection.metadata.pop(WHO, None)
        else:
            connection.metadata[WHO] = who
        rules, now = self.rules, who or Who(connection.user_id)
        revoked = rules.revoked(now, sorted(connection.rooms))
        left = set(revoked)
        for room in sorted(connection.rooms):
            watched = watched_room(room)
            if watched is None or watched.startswith(RESERVED_PREFIX):
                continue
            if watched in left or rules.check(now, watched, Action.PRESENCE) is not None:
                revoked.append(room)
        if not revoked:
            return
        head, watched = revoked[0], watched_room(revoked[0])  # (a watch only if no room went)
        if watched is None:
            first = rules.check(now, head, Action.JOIN)
        else:
            first = rules.check(now, watched, Action.PRESENCE)
        for room in revoked:
            self._hub.leave(connection, room)
        self._events.event(
            "rooms_revoked",
            "connection %s (user %s): a refreshed token takes away %d room(s), e.g. %s",
            connection.connection_id,
            preview(connection.user_id),
            len(revoked),
            preview(revoked[0]),
            level=logging.INFO,
        )
        notice = {
            "type": "revoked",
            "rooms": revoked,
            "cause": (first.cause if first is not None else Cause.NOT_GRANTED).value,
            "reason": "the refreshed token no longer grants these rooms; they were left",
            "ref_event_id": ref_event_id,
        }
        self._hub.deliver_to(connection, encode(notice))
