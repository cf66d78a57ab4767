"""The ``history`` command: a client reads a room's history without joining it.

The read may need I/O (a Redis script), so it runs in the background, bounded in number for
the whole server; the answer carries the stored messages spliced in as they are, without
decoding them again.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from roomcast.connection import Connection
from roomcast.errors import BrokerUnavailable, CloseCode
from roomcast.frame import Frame
from roomcast.history.positions import Page, Position
from roomcast.hub import Hub
from roomcast.messages import dumps, preview
from roomcast.presence.feed import RESERVED_PREFIX
from roomcast.protocol import HistoryMessage

__all__ = ["MAX_READS", "HistoryReads", "page_body", "since_refusal"]

MAX_READS = 256
"""History reads in flight at once for the whole server; more are refused (1013)."""
DEFAULT_LIMIT = 100


class HistoryReads:
    """Carries out ``history`` commands.

    Args:
        hub: Whose history is read.
        refuse: Answers a command with an error (and counts and logs it).
        spawn: Runs a read in the background (owned by the server).
    """

    def __init__(
        self,
        hub: Hub,
        refuse: Callable[[Connection, str, str, CloseCode], None],
        spawn: Callable[[Coroutine[Any, Any, None]], object],
    ) -> None:
        self._hub = hub
        self._refuse = refuse
        self._spawn = spawn
        self._in_flight = 0

    def read(self, connection: Connection, command: HistoryMessage) -> None:
        """Answer one ``history`` command (now if it is refused, else once read)."""
        refusal = since_refusal(command.since) if command.since is not None else None
        if command.room.startswith(RESERVED_PREFIX):
            refusal = f"room {preview(command.room)} keeps no history"
        elif self._hub.history_limits(command.room) is None:
            refusal = "this server keeps no history" if refusal is None else refusal
        elif command.limit is not None and command.limit < 0:
            refusal = "'limit' must not be negative"
        if refusal is not None:
            self._refuse(connection, command.event_id, refusal, CloseCode.POLICY_VIOLATION)
            return
        if self._in_flight >= MAX_READS:
            self._refuse(
                connection,
                command.event_id,
                "too many history reads; retry",
                CloseCode.TRY_AGAIN_LATER,
            )
            return
        self._in_flight += 1
        self._spawn(self._read(connection, command))

    async def _read(self, connection: Connection, command: HistoryMessage) -> None:
        since = None if command.since is None else Position.parse(command.since)
        limit = DEFAULT_LIMIT if command.limit is None else command.limit
        try:
            page = await self._hub.read_history(command.room, since, limit)
        except (BrokerUnavailable, LookupError) as exc:
            self._refuse(connection, command.event_id, str(exc), CloseCode.TRY_AGAIN_LATER)
            return
        finally:
            self._in_flight -= 1
        head = {"type": "history", "room": command.room, "ref_event_id": command.event_id}
        body = page_body(head, page, since is not None)
        self._hub.deliver_to(connection, Frame.from_payload(body, False))


def since_refusal(since: object) -> str | None:
    """What is wrong with a client's ``since`` (None: nothing)."""
    try:
        Position.parse(since)
    except ValueError as exc:
        return str(exc)
    return None


def page_body(head: dict[str, Any], page: Page, asked_since: bool) -> bytes:
    """A history answer: ``head``, the page's ``position`` (where it ends: a client asks again
    from there), ``recovered`` if it asked ``since``, and the messages as stored, each encoded
    once already (spliced in, not decoded)."""
    answer = dict(head)
    answer["position"] = page.position.as_dict()
    if asked_since:
        answer["recovered"] = page.recovered
    if page.payloads:
        answer["position"] = {"epoch": page.position.epoch, "offset": page.last}
    return dumps(answer).encode()[:-1] + b',"messages":[' + b",".join(page.payloads) + b"]}"
