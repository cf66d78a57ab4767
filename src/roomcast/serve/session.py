"""The client protocol of ``roomcast serve``: what each message a client sends does.

A ``Session`` turns a client's messages into changes of the hub and answers: the rate limit
(pings, pongs and continuation frames charged too, by the transport), membership with its
limits and the server's ``$`` rooms, publishing to a room, token refreshes; the room rules
are asked (``roomcast.serve.permissions``) once per command.  It does no I/O of its own:
answers are frames delivered through the hub, the only other effects the close of a client
over the rate limit and ``on_publish``.  So it is driven without a socket in its tests.
Per connection it keeps the rate limit's three numbers, in a slot of the transport.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from roomcast.auth import AuthenticationError, Identity
from roomcast.connection import Connection
from roomcast.errors import CapacityExceeded, CloseCode, InvalidIdentifier
from roomcast.frame import encode
from roomcast.history.contract import Joined
from roomcast.history.positions import Position
from roomcast.hub import Hub
from roomcast.limits import RateLimit
from roomcast.limits import Verdict as RateVerdict
from roomcast.logbudget import EventLog
from roomcast.messages import AckMessage, ErrorMessage, PingMessage, PongMessage, preview
from roomcast.presence.feed import (
    RESERVED_PREFIX,
    STATS_ROOM,
    PresenceFeed,
    presence_room,
    watched_room,
)
from roomcast.protocol import (
    AuthMessage,
    HistoryMessage,
    JoinMessage,
    LeaveMessage,
    PublishMessage,
    RoomMessage,
    interpret,
)
from roomcast.rules import Action, ClaimError, Refusal
from roomcast.serve.config import ServerConfig
from roomcast.serve.history_reads import HistoryReads, since_refusal
from roomcast.serve.metrics import ServerCounters
from roomcast.serve.permissions import Permissions, close_code

__all__ = ["ClientTransport", "Session"]


class ClientTransport(Protocol):
    """What a session needs of a client's transport (``NativeTransport`` has it)."""

    connection: Connection
    rate_state: tuple[float, float, int] | None
    """The rate limit's bookkeeping for this client (tokens, time, strikes)."""

    def close(self, code: int, reason: str = "") -> None: ...


class Session:
    """Carries out client messages for one server (one object for all its connections).

    Args:
        config: The limits (rate, rooms per connection, the $stats interval).
        hub: Where membership changes and deliveries go.
        counters: Messages in, protocol errors, rate-limited messages, auth failures.
        events: Where refusals are logged, within the budget.
        presence: The presence feed, if presence is served (read at each use: a server may
            set its feed up after the session).
        verify: Checks a refreshed token (None: the server takes no tokens).
        arm_expiry: Moves a connection's token expiry.
        spawn: Runs a history read in the background (owned by the server).
        permissions: The room rules (the server shares its own with the gate); made from
            ``config`` if omitted.
    """

    def __init__(
        self,
        config: ServerConfig,
        hub: Hub,
        counters: ServerCounters,
        events: EventLog,
        presence: Callable[[], PresenceFeed | None],
        verify: Callable[[str], Identity] | None,
        arm_expiry: Callable[[str, float | None], None],
        spawn: Callable[[Coroutine[Any, Any, None]], object],
        permissions: Permissions | None = None,
    ) -> None:
        self._config = config
        self._hub = hub
        self._counters = counters
        self._events = events
        self._presence = presence
        self._verify = verify
        self._arm_expiry = arm_expiry
        self._spawn = spawn
        self._permissions = permissions or Permissions(config, hub, counters, events)
        self._reads = HistoryReads(hub, self._refuse, spawn)
        # Messages of connections whose join waits for a room's history: carried out after it.
        self._waiting: dict[Connection, collections.deque[str]] = {}
        self._rate = (
            RateLimit(config.rate_limit, config.rate_burst) if config.rate_limit > 0 else None
        )
        self.on_publish: Callable[[Connection, str, Any], None] | None = None  # (lifecycle)

    @property
    def rate_limited(self) -> bool:
        """Whether a rate limit applies at all."""
        return self._rate is not None

    def received(self, transport: ClientTransport, message: str | bytes, size: int) -> None:
        """One complete message from the client: charged to its rate, then carried out."""
        connection = transport.connection
        self._counters.messages_in += 1
        self._counters.bytes_in += size
        if self._rate is not None and not self.charge(transport):
            return
        if isinstance(message, bytes):
            transport.close(CloseCode.UNSUPPORTED_DATA, "binary frames are not supported")
            return
        waiting = self._waiting.get(connection)
        if waiting is None:
            self._carry(connection, message)
        elif len(waiting) < _MAX_WAITING:  # a join is under way: the rest follows it, in order
            waiting.append(message)
        else:
            self._reply(
                connection,
                ErrorMessage(error="too many messages while a join is under way", code=1013),
            )

    def forget(self, connection: Connection) -> None:
        """The connection is gone: drop what waited for its join."""
        self._waiting.pop(connection, None)

    def _carry(self, connection: Connection, message: str) -> None:
        command = interpret(message)
        if isinstance(command, ErrorMessage):
            self._counters.protocol_errors += 1
            self._events.event(
                "bad_message",
                "connection %s (user %s): %s",
                connection.connection_id,
                preview(connection.user_id),
                command.error,
                level=logging.INFO,
            )
            self._reply(connection, command)
        elif isinstance(command, PublishMessage):
            self._publish(connection, command)
        elif isinstance(command, JoinMessage | LeaveMessage):
            self._membership(connection, command)
        elif isinstance(command, PingMessage):
            self._reply(connection, PongMessage(ping_event_id=command.event_id))
        elif isinstance(command, AuthMessage):
            self._reauthenticate(connection, command)
        elif isinstance(command, HistoryMessage):
            room = command.room
            if not room.startswith(RESERVED_PREFIX):  # ($ rooms: "keeps no history")
                refusal = self._permissions.check(connection, room, Action.HISTORY)
                if refusal is not None:
                    self._deny(connection, command.event_id, refusal)
                    return
            self._reads.read(connection, command)
        # PongMessage: answers to application pings; the heartbeat issue will record them.

    def charge(self, transport: ClientTransport) -> bool:
        """Charge one message to the client's bucket; refuse or cut off when it is empty."""
        assert self._rate is not None
        now = time.monotonic()
        state = transport.rate_state or (self._rate.burst, now, 0)
        verdict, tokens, stamp, strikes = self._rate.check(*state, now)
        transport.rate_state = (tokens, stamp, strikes)
        if verdict is RateVerdict.ALLOW:
            return True
        self._counters.rate_limited += 1
        if verdict is RateVerdict.CUT_OFF:
            self._events.event(
                "rate_limit_close",
                "closed connection %s (user %s) with 1008",
                transport.connection.connection_id,
                preview(transport.connection.user_id),
                level=logging.INFO,
            )
            transport.close(CloseCode.POLICY_VIOLATION, "rate limit exceeded")
        elif strikes == 1:  # say it once per episode, not per dropped message
            self._events.event(
                "rate_limited",
                "connection %s (user %s) over %g messages/s",
                transport.connection.connection_id,
                preview(transport.connection.user_id),
                self._rate.rate,
                level=logging.INFO,
            )
            self._reply(
                transport.connection,
                ErrorMessage(
                    error=f"rate limit exceeded ({self._rate.rate:g}/s); messages dropped",
                    code=CloseCode.POLICY_VIOLATION,
                ),
            )
        return False

    def _reauthenticate(self, connection: Connection, command: AuthMessage) -> None:
        """A fresh token for the same user moves the connection's expiry; anything else is
        refused (and the old expiry stands)."""
        if self._verify is None:
            self._refuse(connection, command.event_id, "this server does not take tokens")
            return
        try:
            identity = self._verify(command.token)
        except AuthenticationError as exc:
            self._counters.auth_failures += 1
            self._refuse(connection, command.event_id, str(exc))
            return
        if identity.user_id != connection.user_id:
            self._refuse(connection, command.event_id, "the token is for another user")
            return
        try:
            who = self._permissions.who(identity)
        except ClaimError as exc:
            self._counters.auth_failures += 1
            self._refuse(connection, command.event_id, str(exc))
            return
        connection.metadata["token_expires_at"] = identity.expires_at
        self._arm_expiry(connection.connection_id, identity.expires_at)
        self._permissions.reassign(connection, who, command.event_id)  # (rooms it took away)
        self._reply(connection, AckMessage(ack_event_id=command.event_id))

    def _membership(self, connection: Connection, command: JoinMessage | LeaveMessage) -> None:
        room = command.room
        try:
            if isinstance(command, JoinMessage):
                limit = self._config.max_rooms_per_connection
                joined = len(connection.rooms) + self._hub.joining(connection)
                if room not in connection.rooms and joined >= limit:
                    self._refuse(connection, command.event_id, f"at most {limit} rooms")
                    return
                served = self._presence() is not None
                refusal = self._permissions.join_refusal(
                    connection, room, stats=self._config.stats_interval > 0, presence=served
                )
                if refusal is None and command.since is not None:
                    refusal = since_refusal(command.since)
                if refusal is not None:
                    self._deny(connection, command.event_id, refusal)
                    return
                since = None if command.since is None else Position.parse(command.since)
                if since is not None and not self._permissions.may_replay(connection, room):
                    since = None  # (a join without the replay: "recovered": false)
                at_once: list[Joined] = []  # (the answer, if it came before join_at returned)
                later = [False]

                def reply(done: Joined) -> None:
                    if later[0]:
                        self._joined(connection, command, done)
                    else:
                        at_once.append(done)

                self._hub.join_at(connection, room, since, reply)  # (presence hears it)
                later[0] = True
                if at_once:
                    self._answer_join(connection, command, at_once[0])
                else:  # the room's history is being read: later messages wait for the join
                    self._waiting.setdefault(connection, collections.deque())
                return
            if not self._hub.leave(connection, room):
                self._refuse(connection, command.event_id, f"not in room {preview(room)}")
                return
        except InvalidIdentifier as exc:
            self._refuse(connection, command.event_id, str(exc))
            return
        except CapacityExceeded as exc:
            self._refuse(connection, command.event_id, str(exc), CloseCode.TRY_AGAIN_LATER)
            return
        self._reply(connection, AckMessage(ack_event_id=command.event_id))
        presence = self._presence()
        if (
            presence is not None
            and room != STATS_ROOM
            and watched_room(room) is None
            and self._permissions.watch_needs_membership(room)
        ):
            self._hub.leave(connection, presence_room(room))  # no longer allowed to watch

    def _joined(self, connection: Connection, command: JoinMessage, joined: Joined) -> None:
        """A join ended (at once, or once the room's history was read)."""
        try:
            self._answer_join(connection, command, joined)
        finally:
            self._resume(connection)

    def _resume(self, connection: Connection) -> None:
        """Carry out what waited for a join, until a join waits again."""
        if connection not in self._waiting or self._hub.joining(connection):
            return
        waiting = self._waiting.pop(connection)
        while waiting:
            self._carry(connection, waiting.popleft())
            if connection in self._waiting:  # that one waits for a history read too
                self._waiting[connection] = waiting
                return

    def _answer_join(self, connection: Connection, command: JoinMessage, joined: Joined) -> None:
        if joined.failure is not None:
            self._refuse(connection, command.event_id, joined.failure, CloseCode.TRY_AGAIN_LATER)
            return
        ack = AckMessage(ack_event_id=command.event_id).to_dict()
        if joined.position is not None:
            ack["position"] = joined.position.as_dict()
        if command.since is not None:
            ack["recovered"] = joined.recovered
            ack["replayed"] = joined.replayed
        self._reply(connection, ack)
        presence = self._presence()
        watched = watched_room(command.room)
        if presence is not None and watched is not None:
            presence.request_snapshot(connection, watched)  # a repeated join: a resync

    def _publish(self, connection: Connection, command: PublishMessage) -> None:
        if command.room.startswith(RESERVED_PREFIX):
            self._refuse(connection, command.event_id, f"room {preview(command.room)} is reserved")
            return
        if command.room not in connection.rooms:
            self._refuse(connection, command.event_id, f"not in room {preview(command.room)}")
            return
        refusal = self._permissions.check(connection, command.room, Action.PUBLISH)
        if refusal is not None:
            self._deny(connection, command.event_id, refusal)
            return
        outgoing = RoomMessage(
            room=command.room,
            sender=connection.user_id,
            data=command.data,
            event_id=command.event_id,
        )
        event_id = command.event_id

        def published(position: Position | None, failure: str | None) -> None:
            if failure is not None:
                self._reply(
                    connection,
                    ErrorMessage(
                        error=failure, code=CloseCode.TRY_AGAIN_LATER, ref_event_id=event_id
                    ),
                )
                return
            if self.on_publish is not None:  # (a lifecycle event)
                self.on_publish(connection, command.room, command.data)
            ack = AckMessage(ack_event_id=event_id)
            if position is None:
                self._reply(connection, ack)
            else:
                self._reply(connection, {**ack.to_dict(), "position": position.as_dict()})

        self._hub.publish(command.room, encode(outgoing), sender=connection, done=published)

    def _deny(self, connection: Connection, event_id: str, refusal: Refusal | str) -> None:
        """Refuse a command with a reason, and the rules' cause if they refused it."""
        if isinstance(refusal, str):
            self._refuse(connection, event_id, refusal)
        else:
            code = close_code(refusal)
            self._refuse(connection, event_id, refusal.message, code, refusal.cause.value)

    def _refuse(
        self,
        connection: Connection,
        event_id: str,
        why: str,
        code: CloseCode = CloseCode.POLICY_VIOLATION,
        cause: str | None = None,
    ) -> None:
        self._counters.protocol_errors += 1
        self._events.event(
            "command_refused",
            "connection %s (user %s): %s",
            connection.connection_id,
            preview(connection.user_id),
            why,
            level=logging.INFO,
        )
        self._reply(
            connection,
            ErrorMessage(error=why, code=code, ref_event_id=event_id, cause=cause),
        )

    def _reply(self, connection: Connection, message: Any) -> None:
        self._hub.deliver_to(connection, encode(message))


_MAX_WAITING = 64
"""Messages a client may send while one of its joins waits for a room's history."""
