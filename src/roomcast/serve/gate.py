"""Who may open a WebSocket: the checks an upgrade request passes before anything is kept.

Runs in picows' upgrade callback, before a transport exists: draining, capacity, Origin, the
room in the path, who the client is (the connect hook's decision, taken before picows read the
request; or the token, or ``?user_id=``; or none, where a namespace is ``anonymous``) with
its capabilities, id rules, the room rules for ``/ws/ROOM``, the room cap and the
per-user cap, in that order.  A refusal is an HTTP answer, counted and logged within the log
budget; nothing about the client is registered until it is admitted.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from typing import Any
from urllib.parse import unquote

from picows import WSUpgradeRequest, WSUpgradeResponseWithListener

from roomcast.auth import (
    AuthenticationError,
    Identity,
    identity_of,
    query_value,
    token_from_request,
)
from roomcast.errors import InvalidIdentifier
from roomcast.hub import Hub
from roomcast.logbudget import EventLog
from roomcast.presence.feed import RESERVED_PREFIX
from roomcast.rules import Action, Cause, ClaimError, Who
from roomcast.serve.config import ServerConfig
from roomcast.serve.connect_hook import HandOver
from roomcast.serve.metrics import ServerCounters
from roomcast.serve.pages import respond
from roomcast.serve.permissions import ANONYMOUS, Permissions

__all__ = ["Admitted", "Gate"]

logger = logging.getLogger("roomcast.server")


@dataclasses.dataclass(frozen=True, slots=True)
class Admitted:
    """An upgrade that passed: who the client is and what it asked for."""

    user_id: str | None
    room: str | None
    """A room to join at once (``/ws/ROOM``)."""
    expires_at: float | None
    """When the client's token expires, with authentication."""
    protocol: str | None
    """The subprotocol to select (``bearer`` when the token came as one)."""
    who: Who | None = None
    """What the rules keep of the client (``Permissions.who``): None when its user id says
    it all."""
    data: Any = None
    """The connect hook's ``data`` for the connection (None: none)."""


class Gate:
    """Decides each upgrade request.

    Args:
        config: The limits, the authenticator, the allowed Origins.
        hub: Checks ids, room capacity and the user's connections.
        counters: ``refused_upgrades`` and ``auth_failures`` are counted here.
        events: Where refusals are logged, within the budget.
        permissions: The room rules (shared with the session); made from ``config`` if
            omitted.
        handover: Where the connect hook's decision waits for the upgrade it is about
            (``roomcast.serve.connect_hook``); None without a connect hook.
    """

    def __init__(
        self,
        config: ServerConfig,
        hub: Hub,
        counters: ServerCounters,
        events: EventLog,
        permissions: Permissions | None = None,
        handover: HandOver | None = None,
    ) -> None:
        self._config = config
        self._hub = hub
        self._counters = counters
        self._events = events
        self._permissions = permissions or Permissions(config, hub, counters, events)
        self._handover = handover

    def admit(
        self, request: WSUpgradeRequest, path: str, query: str, *, open_now: int, cap: int
    ) -> Admitted | WSUpgradeResponseWithListener:
        """The client's identity and room, or the HTTP refusal to answer with.

        ``open_now`` connections are open; ``cap`` is the most this process admits.
        """
        config = self._config
        decided = None if self._handover is None else self._handover.take()
        if open_now >= cap:
            return self.refuse(503, b"server at capacity\n")
        allowed = config.allowed_origins
        if allowed is not None:
            origin = request.headers.get("origin")
            if origin is not None and origin not in allowed:
                return self.refuse(403, b"origin not allowed\n")
        room = unquote(path[4:]) if path.startswith("/ws/") else None
        if room is not None and room.startswith(RESERVED_PREFIX):
            return self.refuse(400, b"rooms starting with '$' cannot be joined here\n")
        if room is not None and config.join_hook_url:
            return self.refuse(400, b"the join hook decides joins: connect to /ws, then join\n")
        protocol = None
        expires_at = None
        user_id: str | None
        who: Who | None = None
        data = None
        if decided is not None:  # the connect hook admitted it (a refusal never gets here)
            user_id, expires_at, data = decided.user, decided.expires_at, decided.data
            if user_id is None:
                who = ANONYMOUS  # (the failure policy let it in)
            elif decided.capabilities is not None:
                who = decided.who()
        elif config.authenticator is not None:
            try:
                identity, protocol = self._authenticate(request, query)
                who = self._permissions.who(identity)
            except (AuthenticationError, ClaimError) as exc:
                self._counters.auth_failures += 1
                status = exc.status if isinstance(exc, AuthenticationError) else 401
                return self.refuse(status, f"{exc}\n".encode())
            if identity is not None:
                user_id, expires_at = identity.user_id, identity.expires_at
            else:
                user_id = None  # (anonymous: no user id, whatever the query says)
        elif self._handover is not None:  # (cannot happen: the listener asks for every /ws)
            return self.refuse(503, b"the connect hook did not decide\n")
        else:
            user_id = query_value(query, "user_id")
        try:
            for what, value in (("room", room), ("user_id", user_id)):
                if value is not None:
                    self._hub.check_id(what, value)
        except InvalidIdentifier as exc:
            return self.refuse(400, f"{exc}\n".encode())
        if room is not None:
            refusal = self._permissions.check_for(who, user_id, (), room, Action.JOIN)
            if refusal is not None:
                status = 503 if refusal.cause is Cause.ROOM_FULL else 403
                return self.refuse(status, f"{refusal.cause.value}: {refusal.message}\n".encode())
        if room is not None and not self._hub.can_open(room):
            return self.refuse(503, b"this server holds its maximum of rooms\n")
        per_user = config.max_connections_per_user
        if per_user and user_id is not None and self._user_full(user_id, per_user):
            return self.refuse(403, b"too many connections for this user\n")
        return Admitted(user_id, room, expires_at, protocol, who, data)

    def _user_full(self, user_id: str, per_user: int) -> bool:
        return len(self._hub.get_user_connections(user_id)) >= per_user

    def _authenticate(
        self, request: WSUpgradeRequest, query: str
    ) -> tuple[Identity | None, str | None]:
        """The identity a valid token proves (None: no token, where anonymous clients are
        let in), and the subprotocol to accept."""
        headers = [(str(name), str(value)) for name, value in request.headers.items()]
        token, protocol = token_from_request(
            headers, query, allow_query=self._config.token_in_query
        )
        if not token:
            if not self._config.token_in_query and query_value(query, "token"):
                raise AuthenticationError(
                    "tokens in the query string are disabled on this server: send it as "
                    "'Authorization: Bearer TOKEN' or the subprotocols 'bearer, TOKEN'"
                )
            if self._permissions.anonymous:
                return None, None
            raise AuthenticationError("a token is required")
        return self.verify(token), protocol

    def verify(self, token: str) -> Identity:
        """The identity ``token`` proves (at the upgrade and at a refresh).

        Raises:
            AuthenticationError: the token is refused, or the authenticator is broken (500).
        """
        authenticator = self._config.authenticator
        assert authenticator is not None
        try:
            outcome = authenticator(token)
            if inspect.isawaitable(outcome):
                close = getattr(outcome, "close", None)
                if close is not None:
                    close()  # (never awaited: no "coroutine was never awaited" warning)
                raise AuthenticationError(
                    "server misconfigured: the authenticator must be sync", 500
                )
            return identity_of(outcome)
        except AuthenticationError:
            raise
        except Exception as exc:  # a bug in a custom authenticator: the client is not to blame
            logger.error("the authenticator failed: %r", exc)
            why = "server misconfigured: the authenticator failed"
            raise AuthenticationError(why, 500) from exc

    def refuse(self, status: int, body: bytes) -> WSUpgradeResponseWithListener:
        """An HTTP refusal, counted and logged."""
        self.refused(status, body.decode().strip())
        return respond(status, body)

    def refused(self, status: int, why: str) -> None:
        """Count and log a refusal (written here, or by the connect hook's reader)."""
        self._counters.refused_upgrades += 1
        level = logging.INFO if status < 500 else logging.WARNING  # (the client's, or ours)
        self._events.event("upgrade_refused", "HTTP %d: %s", status, why, level=level)
