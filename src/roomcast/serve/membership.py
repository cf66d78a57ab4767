"""Join and leave, as ``roomcast serve`` carries them out for a client.

A join passes the per-connection room limit, the room rules (or, for the server's ``$``
rooms, whether they are served) and the ``since`` check, then goes to the hub, which may
answer at once or once the room's history is read.  While it waits, the connection's later
messages wait too (``Session``'s queue): ``hold`` starts that wait and ``resume`` ends it.
The checks (``admissible``) are separate from the change (``join``) so that a join whose hook
is asked first is checked again, synchronously, right before it is made.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from roomcast.connection import Connection
from roomcast.errors import CapacityExceeded, CloseCode, InvalidIdentifier
from roomcast.history.contract import Joined
from roomcast.history.positions import Position
from roomcast.hub import Hub
from roomcast.messages import AckMessage, preview
from roomcast.presence.feed import STATS_ROOM, PresenceFeed, presence_room, watched_room
from roomcast.protocol import JoinMessage, LeaveMessage
from roomcast.serve.config import ServerConfig
from roomcast.serve.history_reads import since_refusal
from roomcast.serve.permissions import Permissions
from roomcast.serve.replies import Replies

__all__ = ["Membership"]


class Membership:
    """Carries out joins and leaves for one server's clients.

    Args:
        config: ``max_rooms_per_connection`` and whether ``$stats`` is served.
        hub: Where membership changes.
        permissions: The room rules.
        presence: The presence feed, if served (read at each use).
        replies: How commands are answered.
        hold: Makes the connection's later messages wait (a join waits for history).
        resume: Carries out what waited, once nothing holds the connection any more.
    """

    def __init__(
        self,
        config: ServerConfig,
        hub: Hub,
        permissions: Permissions,
        presence: Callable[[], PresenceFeed | None],
        replies: Replies,
        hold: Callable[[Connection], None],
        resume: Callable[[Connection], None],
    ) -> None:
        self._config = config
        self._hub = hub
        self._permissions = permissions
        self._presence = presence
        self._replies = replies
        self._hold = hold
        self._resume = resume

    def admissible(self, connection: Connection, command: JoinMessage) -> bool:
        """Whether ``command`` passes the limits and rules now; if not, it is refused."""
        room = command.room
        limit = self._config.max_rooms_per_connection
        joined = len(connection.rooms) + self._hub.joining(connection)
        if room not in connection.rooms and joined >= limit:
            self._replies.refuse(connection, command.event_id, f"at most {limit} rooms")
            return False
        served = self._presence() is not None
        refusal = self._permissions.join_refusal(
            connection, room, stats=self._config.stats_interval > 0, presence=served
        )
        if refusal is None and command.since is not None:
            refusal = since_refusal(command.since)
        if refusal is not None:
            self._replies.deny(connection, command.event_id, refusal)
            return False
        return True

    def join(
        self, connection: Connection, command: JoinMessage, extra: Mapping[str, Any] | None = None
    ) -> None:
        """Join an admissible room; the ack carries ``extra`` (a hook's ``data``)."""
        room = command.room
        since = None if command.since is None else Position.parse(command.since)
        if since is not None and not self._permissions.may_replay(connection, room):
            since = None  # (a join without the replay: "recovered": false)
        at_once: list[Joined] = []  # (the answer, if it came before join_at returned)
        later = [False]

        def reply(done: Joined) -> None:
            if later[0]:
                try:
                    self._answer(connection, command, done, extra)
                finally:
                    self._resume(connection)
            else:
                at_once.append(done)

        try:
            self._hub.join_at(connection, room, since, reply)  # (presence hears it)
        except InvalidIdentifier as exc:
            self._replies.refuse(connection, command.event_id, str(exc))
            return
        except CapacityExceeded as exc:
            why = str(exc)
            self._replies.refuse(connection, command.event_id, why, CloseCode.TRY_AGAIN_LATER)
            return
        later[0] = True
        if at_once:
            self._answer(connection, command, at_once[0], extra)
        else:  # the room's history is being read: later messages wait for the join
            self._hold(connection)

    def leave(self, connection: Connection, command: LeaveMessage) -> None:
        """Leave a room (and the watch of its presence, if watching needs membership)."""
        room = command.room
        try:
            left = self._hub.leave(connection, room)
        except InvalidIdentifier as exc:
            self._replies.refuse(connection, command.event_id, str(exc))
            return
        if not left:
            self._replies.refuse(connection, command.event_id, f"not in room {preview(room)}")
            return
        self._replies.reply(connection, AckMessage(ack_event_id=command.event_id))
        presence = self._presence()
        if (
            presence is not None
            and room != STATS_ROOM
            and watched_room(room) is None
            and self._permissions.watch_needs_membership(room)
        ):
            self._hub.leave(connection, presence_room(room))  # no longer allowed to watch

    def _answer(
        self,
        connection: Connection,
        command: JoinMessage,
        joined: Joined,
        extra: Mapping[str, Any] | None,
    ) -> None:
        if joined.failure is not None:
            why = joined.failure
            self._replies.refuse(connection, command.event_id, why, CloseCode.TRY_AGAIN_LATER)
            return
        ack = AckMessage(ack_event_id=command.event_id).to_dict()
        if joined.position is not None:
            ack["position"] = joined.position.as_dict()
        if command.since is not None:
            ack["recovered"] = joined.recovered
            ack["replayed"] = joined.replayed
        if extra:
            ack.update(extra)
        self._replies.reply(connection, ack)
        presence = self._presence()
        watched = watched_room(command.room)
        if presence is not None and watched is not None:
            presence.request_snapshot(connection, watched)  # a repeated join: a resync
