"""Commands that wait for the backend: the joins and publishes its hooks decide.

A join or publish that the room rules allow is put to the hook; the connection's later
messages wait behind it, in order, in ``Session``'s bounded queue (the one a join waiting for
a room's history uses), and are carried out once the answer is acted on.  One call per
connection at a time, so the calls in flight are at most the connections, and each ends within
the hook client's timeout.  A connection that goes meanwhile drops its answer and what waited.

What the client sees when the hook does not allow, as an ``error`` answering its command:

- the backend refused: ``"cause": "hook_denied"``, code 1008, the backend's reason;
- no usable answer and the deny policy: ``"cause": "hook_unavailable"``, code 1013 (try again
  later), a reason that names no detail ("the backend did not answer in time").
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from roomcast.connection import Connection
from roomcast.errors import CloseCode
from roomcast.hooks.decisions import FAILED, Allowed, Decision, Denied, Failure
from roomcast.presence.feed import RESERVED_PREFIX
from roomcast.serve.permissions import CONNECT_DATA
from roomcast.serve.replies import Replies

__all__ = ["HOOK_DENIED", "HOOK_UNAVAILABLE", "CommandHooks", "Hooked"]

HOOK_DENIED = "hook_denied"
"""The ``cause`` of a command the backend refused."""
HOOK_UNAVAILABLE = "hook_unavailable"
"""The ``cause`` of a command refused because the backend gave no usable answer."""


class CommandHooks(Protocol):
    """What asks the backend about commands (``HookClient`` has it)."""

    async def join(
        self, user: str | None, connection: str, room: str, data: Any = None
    ) -> Decision: ...

    async def publish(
        self, user: str | None, connection: str, room: str, data: Any
    ) -> Decision: ...


class Hooked:
    """Puts commands to the hooks and carries out their answers, in each connection's order.

    Args:
        hooks: Calls the backend.
        spawn: Runs a call in the background, owned by the server.
        hold: Makes the connection's later messages wait.
        resume: Carries out what waited, once nothing holds the connection.
        replies: How refusals are answered.
        join: Whether joins go to the join hook.
        publish: Whether publishes go to the publish hook.
    """

    def __init__(
        self,
        hooks: CommandHooks,
        spawn: Callable[[Coroutine[Any, Any, None]], object],
        hold: Callable[[Connection], None],
        resume: Callable[[Connection], None],
        replies: Replies,
        *,
        join: bool,
        publish: bool,
    ) -> None:
        self._hooks = hooks
        self._spawn = spawn
        self._hold = hold
        self._resume = resume
        self._replies = replies
        self._join = join
        self._publish = publish
        self._asking: set[Connection] = set()

    def asking(self, connection: Connection) -> bool:
        """Whether a command of ``connection`` waits for a hook."""
        return connection in self._asking

    def forget(self, connection: Connection) -> None:
        """The connection is gone: its answer, when it comes, is dropped."""
        self._asking.discard(connection)

    def ask_join(
        self, connection: Connection, room: str, event_id: str, then: Callable[[Allowed], None]
    ) -> bool:
        """Put a join to the hook (True), or say it needs none (False): no join hook, a room
        of the server's (``$``), or a room the connection is in already (a repeated join)."""
        if not self._join or room.startswith(RESERVED_PREFIX) or room in connection.rooms:
            return False
        data = connection.metadata.get(CONNECT_DATA)
        call = self._hooks.join(connection.user_id, connection.connection_id, room, data)
        self._ask(connection, event_id, call, then)
        return True

    def ask_publish(
        self,
        connection: Connection,
        room: str,
        data: Any,
        event_id: str,
        then: Callable[[Allowed], None],
    ) -> bool:
        """Put a publish to the hook (True), or say it needs none (False)."""
        if not self._publish:
            return False
        call = self._hooks.publish(connection.user_id, connection.connection_id, room, data)
        self._ask(connection, event_id, call, then)
        return True

    def _ask(
        self,
        connection: Connection,
        event_id: str,
        call: Coroutine[Any, Any, Decision],
        then: Callable[[Allowed], None],
    ) -> None:
        self._asking.add(connection)
        self._hold(connection)
        self._spawn(self._answer(connection, event_id, call, then))

    async def _answer(
        self,
        connection: Connection,
        event_id: str,
        call: Coroutine[Any, Any, Decision],
        then: Callable[[Allowed], None],
    ) -> None:
        try:
            decision = await call
        except Exception:  # (a stopped client: the server is going down) nobody is left hanging
            decision = Denied(FAILED[Failure.UNREACHABLE], 503, Failure.UNREACHABLE)
        if connection not in self._asking:
            return  # gone meanwhile
        self._asking.discard(connection)
        try:
            if isinstance(decision, Denied):
                self.refuse(connection, event_id, decision)
            else:
                then(decision)
        finally:
            self._resume(connection)

    def refuse(self, connection: Connection, event_id: str, denied: Denied) -> None:
        """Answer a command the hook (or its failure policy) refused."""
        if denied.failure is None:
            code, cause = CloseCode.POLICY_VIOLATION, HOOK_DENIED
        else:
            code, cause = CloseCode.TRY_AGAIN_LATER, HOOK_UNAVAILABLE
        self._replies.refuse(connection, event_id, denied.reason, code, cause)
