"""How ``roomcast serve`` answers a client's command: an ack, or an error that says why.

Shared by the jobs that carry out commands (``session``, ``membership``, ``hooked``) so that
every refusal is counted, logged within the budget and shaped alike: ``error``, ``code``,
``ref_event_id`` and, when the room rules or a hook refused, a stable ``cause``.
"""

from __future__ import annotations

import logging
from typing import Any

from roomcast.connection import Connection
from roomcast.errors import CloseCode
from roomcast.frame import encode
from roomcast.hub import Hub
from roomcast.logbudget import EventLog
from roomcast.messages import ErrorMessage, preview
from roomcast.rules import Refusal
from roomcast.serve.metrics import ServerCounters
from roomcast.serve.permissions import close_code

__all__ = ["Replies"]


class Replies:
    """Answers to one server's clients, delivered through its hub (never awaited).

    Args:
        hub: Where the answers are delivered.
        counters: ``protocol_errors`` counts every refusal.
        events: Where refusals are logged, within the budget.
    """

    __slots__ = ("_counters", "_events", "_hub")

    def __init__(self, hub: Hub, counters: ServerCounters, events: EventLog) -> None:
        self._hub = hub
        self._counters = counters
        self._events = events

    def reply(self, connection: Connection, message: Any) -> None:
        """Send ``message`` (a message object or a dict) to ``connection``."""
        self._hub.deliver_to(connection, encode(message))

    def deny(self, connection: Connection, event_id: str, refusal: Refusal | str) -> None:
        """Refuse a command with a reason, and the rules' cause if they refused it."""
        if isinstance(refusal, str):
            self.refuse(connection, event_id, refusal)
        else:
            code = close_code(refusal)
            self.refuse(connection, event_id, refusal.message, code, refusal.cause.value)

    def refuse(
        self,
        connection: Connection,
        event_id: str,
        why: str,
        code: CloseCode = CloseCode.POLICY_VIOLATION,
        cause: str | None = None,
    ) -> None:
        """Refuse a command: counted, logged, answered with an ``error``."""
        self._counters.protocol_errors += 1
        self._events.event(
            "command_refused",
            "connection %s (user %s): %s",
            connection.connection_id,
            preview(connection.user_id),
            why,
            level=logging.INFO,
        )
        self.reply(
            connection,
            ErrorMessage(error=why, code=code, ref_event_id=event_id, cause=cause),
        )
