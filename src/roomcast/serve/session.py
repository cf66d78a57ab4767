"""The client protocol of ``roomcast serve``: what each message a client sends does.

A ``Session`` turns a client's messages into changes of the hub and answers: the rate limit
(with pings, pongs and continuation frames charged too, by the transport), the order of a
connection's messages while one of them waits, publishing to a room, token refreshes; joins
and leaves are ``roomcast.serve.membership``'s job, answers ``roomcast.serve.replies``'; what
the room rules allow is asked of ``roomcast.serve.permissions`` once per command.  It does
no I/O of its own: answers are frames delivered through the hub, and the only other effects
are the close of a client over the rate limit and ``on_publish``.  So it can be driven
without a socket (``tests/unit/test_session.py``).

Its per-connection state is the rate limit's three numbers, kept on the transport (a slot of
its own, so that no dictionary per connection is needed).
"""

from __future__ import annotations

import collections
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from roomcast.auth import AuthenticationError, Identity
from roomcast.connection import Connection
from roomcast.errors import CloseCode
from roomcast.frame import encode
from roomcast.history.positions import Position
from roomcast.hooks.decisions import Allowed
from roomcast.hub import Hub
from roomcast.limits import RateLimit
from roomcast.limits import Verdict as RateVerdict
from roomcast.logbudget import EventLog
from roomcast.messages import AckMessage, ErrorMessage, PingMessage, PongMessage, preview
from roomcast.presence.feed import (
    RESERVED_PREFIX,
    PresenceFeed,
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
from roomcast.rules import Action, ClaimError
from roomcast.serve.config import ServerConfig
from roomcast.serve.history_reads import HistoryReads
from roomcast.serve.hooked import CommandHooks, Hooked
from roomcast.serve.membership import Membership
from roomcast.serve.metrics import ServerCounters
from roomcast.serve.permissions import Permissions
from roomcast.serve.replies import Replies

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
        hooks: Asks the backend about joins and publishes, for those ``config`` names a hook
            URL of (``roomcast.serve.hooked``).
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
        hooks: CommandHooks | None = None,
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
        self._replies = replies = Replies(hub, counters, events)
        self._refuse, self._deny, self._reply = replies.refuse, replies.deny, replies.reply
        self._reads = HistoryReads(hub, self._refuse, spawn)
        # Messages of connections whose join waits for a room's history: carried out after it.
        self._waiting: dict[Connection, collections.deque[str]] = {}
        self._membership = Membership(
            config, hub, self._permissions, presence, replies, self._hold, self._resume
        )
        self._hooked = None
        if hooks is not None and (config.join_hook_url or config.publish_hook_url):
            join, publish = bool(config.join_hook_url), bool(config.publish_hook_url)
            self._hooked = Hooked(
                hooks, spawn, self._hold, self._resume, replies, join=join, publish=publish
            )
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
                ErrorMessage(error="too many messages while one waits (a join, a hook)", code=1013),
            )

    def forget(self, connection: Connection) -> None:
        """The connection is gone: drop what waited for its join or a hook."""
        self._waiting.pop(connection, None)
        if self._hooked is not None:
            self._hooked.forget(connection)

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
        elif isinstance(command, JoinMessage):
            self._join(connection, command)
        elif isinstance(command, LeaveMessage):
            self._membership.leave(connection, command)
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

    def _hold(self, connection: Connection) -> None:
        """Later messages of ``connection`` wait (in order) until ``_resume``."""
        self._waiting.setdefault(connection, collections.deque())

    def _resume(self, connection: Connection) -> None:
        """Carry out what waited, until something makes the connection wait again."""
        if connection not in self._waiting or self._hub.joining(connection):
            return
        if self._hooked is not None and self._hooked.asking(connection):
            return
        waiting = self._waiting.pop(connection)
        while waiting:
            self._carry(connection, waiting.popleft())
            if connection in self._waiting:  # that one waits too
                self._waiting[connection] = waiting
                return

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

    def _join(
        self, connection: Connection, command: JoinMessage, decided: Allowed | None = None
    ) -> None:
        """A join: checked, put to the join hook if there is one, checked again and made once
        it allowed (the ack then carries its ``data``)."""
        if not self._membership.admissible(connection, command):
            return
        if decided is None and self._hooked is not None:
            then = functools.partial(self._join, connection, command)
            if self._hooked.ask_join(connection, command.room, command.event_id, then):
                return
        extra = {"data": decided.data} if decided is not None and decided.has_data else None
        self._membership.join(connection, command, extra)

    def _publish(
        self, connection: Connection, command: PublishMessage, decided: Allowed | None = None
    ) -> None:
        """A publish: checked, put to the publish hook if there is one, checked again and
        published once it allowed (with its ``data`` instead of the client's, if it gave
        some)."""
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
        if decided is None and self._hooked is not None:
            then = functools.partial(self._publish, connection, command)
            room, data, event_id = command.room, command.data, command.event_id
            if self._hooked.ask_publish(connection, room, data, event_id, then):
                return
        outgoing = RoomMessage(
            room=command.room,
            sender=connection.user_id,
            data=decided.data if decided is not None and decided.has_data else command.data,
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
                self.on_publish(connection, command.room, outgoing.data)  # (as published)
            ack = AckMessage(ack_event_id=event_id)
            if position is None:
                self._reply(connection, ack)
            else:
                self._reply(connection, {**ack.to_dict(), "position": position.as_dict()})

        self._hub.publish(command.room, encode(outgoing), sender=connection, done=published)


_MAX_WAITING = 64
"""Messages a client may send while one of its joins waits for a room's history."""
