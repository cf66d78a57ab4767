"""What roomcast asks a backend's hooks, and what their answers mean: bodies in, decisions out.

Three hooks, each an HTTP POST of a JSON object, each answered with a JSON object (HTTP 2xx):

* ``connect``: a client opens a WebSocket without a token; the backend says who it is.
  Request::

      {"hook": "connect", "headers": {"cookie": "sid=..."}, "query": {"room": "lobby"},
       "path": "/ws/lobby", "remote": "203.0.113.7"}

  ``headers`` holds only the headers named in ``FORWARDED_HEADERS`` and those the operator
  adds (lower-case names; repeated headers joined by ``", "``, cookies by ``"; "``); ``query``
  the query string's parameters (the first value of a repeated one).  Answer::

      {"allow": true, "user": "alice", "rooms": {"chat:*": ["join", "publish"]},
       "data": {"plan": "pro"}, "expires_at": 1765000000}

  or ``{"allow": false, "reason": "session expired", "status": 401}``.  ``rooms`` is the
  capability claim, parsed exactly as a token's (``Capabilities.from_claim``), so a hook's
  grants mean what a JWT's do; without it, the namespaces' ``allow`` applies.  ``data`` is any
  JSON value, kept with the connection and sent along to the join hook.  ``expires_at`` (Unix
  seconds) closes the connection then, as a token's ``exp`` would.  ``status`` is 401 or 403.

* ``join``: ``{"hook": "join", "user": "alice", "connection": "c1", "room": "chat:lobby",
  "data": <the connect hook's data, or null>}``; answered ``{"allow": true}``,
  ``{"allow": true, "data": ...}`` (sent to the client in its join ack) or
  ``{"allow": false, "reason": "..."}``.

* ``publish``: ``{"hook": "publish", "user": "alice", "connection": "c1", "room":
  "chat:lobby", "data": <the message's data>}``; answered ``{"allow": true}``,
  ``{"allow": true, "data": ...}`` (published instead of the client's data) or
  ``{"allow": false, "reason": "..."}``.

Answers are read strictly: a key that is not listed above, a wrong type, a body that is not
JSON (``NaN`` included) or one over ``MAX_ANSWER_BYTES`` is an ``AnswerError``, and the failure
policy decides (``on_failure``, ``on_connect_failure``), so that a backend's typing mistake
shows at once, in the hook's failure count, instead of silently granting or refusing.
Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from roomcast.rules.capabilities import Capabilities, ClaimError
from roomcast.rules.rooms import Who

__all__ = [
    "FORWARDED_HEADERS",
    "MAX_ANSWER_BYTES",
    "Allowed",
    "AnswerError",
    "ConnectAllowed",
    "ConnectDecision",
    "Decision",
    "Denied",
    "Failure",
    "Hook",
    "Policy",
    "connect_request",
    "join_request",
    "on_connect_failure",
    "on_failure",
    "parse_connect",
    "parse_join",
    "parse_publish",
    "publish_request",
]

FORWARDED_HEADERS = ("authorization", "cookie", "origin", "user-agent", "x-forwarded-for")
"""Headers a connect hook receives by default: what identifies a client and where it comes
from.  Never all of them: a proxy's internal headers stay inside."""
MAX_ANSWER_BYTES = 256 * 1024
"""The largest answer read; a longer one is a failure (``Failure.INVALID``)."""
MAX_REASON = 200
"""Characters of a refusal's reason kept (it is sent to the client)."""
MAX_USER = 1024
"""Characters of a user id (the server's id rules may allow fewer)."""
LATEST_EXPIRY = 253_402_300_799
"""9999-12-31T23:59:59Z, as for a token's ``exp``."""
DENIED = "refused by the backend"
"""The reason of a refusal that gives none."""


class Hook(enum.StrEnum):
    """The decisions a backend can take."""

    CONNECT = "connect"
    JOIN = "join"
    PUBLISH = "publish"


class Policy(enum.StrEnum):
    """What a hook that could not decide decides (timeout, error, garbage)."""

    DENY = "deny"
    """Fail closed (the default): nobody gets in because the backend is down."""
    ALLOW = "allow"
    """Fail open: join and publish go ahead; a connect is admitted as an anonymous client
    (no user, no grants: namespaces that are not ``anonymous`` still refuse it)."""


class Failure(enum.StrEnum):
    """Why a hook did not decide."""

    TIMEOUT = "timeout"
    """No answer within the timeout."""
    SATURATED = "saturated"
    """No free slot (``max_in_flight`` calls running) within the timeout, or too many calls
    waiting for one already."""
    STATUS = "status"
    """An HTTP status other than 2xx."""
    INVALID = "invalid"
    """An answer that is not what this module documents (``AnswerError``)."""
    UNREACHABLE = "unreachable"
    """The backend could not be reached, or the connection broke."""


class AnswerError(ValueError):
    """A hook's answer that does not have the documented shape; the message says where."""


@dataclasses.dataclass(frozen=True, slots=True)
class Allowed:
    """A join or publish may go ahead.

    Attributes:
        data: The backend's data (join: for the client's ack; publish: the data to publish
            instead of the client's); meaningful only if ``has_data``.
        has_data: The answer had ``data`` (which may be JSON ``null``).
        failure: Set when the failure policy decided, not the backend.
    """

    data: Any = None
    has_data: bool = False
    failure: Failure | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Denied:
    """A refusal.

    Attributes:
        reason: A sentence for the client (the backend's, cut to ``MAX_REASON``).
        status: The HTTP status to refuse an upgrade with: 401 or 403 from the backend, 503
            when the failure policy refused (the backend's trouble, not the client's).
        failure: Set when the failure policy decided, not the backend.
    """

    reason: str = DENIED
    status: int = 403
    failure: Failure | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectAllowed:
    """A client the connect hook admitted.

    Attributes:
        user: Its user id; None only when the failure policy admitted it (anonymous).
        capabilities: What the ``rooms`` claim grants; None without one.
        data: The backend's data for this connection (JSON ``null`` without).
        expires_at: When the connection's credentials expire (Unix seconds), or None.
        failure: Set when the failure policy decided, not the backend.
    """

    user: str | None
    capabilities: Capabilities | None = None
    data: Any = None
    expires_at: float | None = None
    failure: Failure | None = None

    def who(self) -> Who:
        """The client as ``roomcast.rules.Rules.check`` sees it."""
        return Who(self.user, self.capabilities, anonymous=self.user is None)


Decision = Allowed | Denied
ConnectDecision = ConnectAllowed | Denied


def _encode(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def connect_request(
    headers: Iterable[tuple[str, str]],
    query: str,
    path: str,
    remote: str | None,
    *,
    forward: Iterable[str] = FORWARDED_HEADERS,
) -> bytes:
    """The connect hook's request body.

    Args:
        headers: The upgrade request's headers, in any case, repeated ones included.
        query: The raw query string (without ``?``).
        path: The request path (``/ws/lobby``).
        remote: The client's address as the server sees it (None: unknown).
        forward: The header names to pass on (any case); others are left out.
    """
    wanted = {name.lower() for name in forward}
    selected: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        if key not in wanted:
            continue
        if key in selected:
            glue = "; " if key == "cookie" else ", "
            selected[key] = f"{selected[key]}{glue}{value}"
        else:
            selected[key] = value
    parameters: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        parameters.setdefault(key, value)
    body = {"hook": "connect", "headers": selected, "query": parameters, "path": path}
    return _encode({**body, "remote": remote})


def join_request(user: str | None, connection: str, room: str, data: Any = None) -> bytes:
    """The join hook's request body (``data``: what the connect hook returned, or None)."""
    return _encode(
        {"hook": "join", "user": user, "connection": connection, "room": room, "data": data}
    )


def publish_request(user: str | None, connection: str, room: str, data: Any) -> bytes:
    """The publish hook's request body (``data``: the message's data)."""
    return _encode(
        {"hook": "publish", "user": user, "connection": connection, "room": room, "data": data}
    )


def _constant(name: str) -> float:
    raise AnswerError(f"the answer holds {name}, which is not JSON")


def _object(body: bytes) -> dict[str, Any]:
    """The answer as a JSON object, strictly."""
    if len(body) > MAX_ANSWER_BYTES:
        raise AnswerError(f"the answer is over {MAX_ANSWER_BYTES} bytes")
    try:
        value = json.loads(body, parse_constant=_constant)
    except UnicodeDecodeError:
        raise AnswerError("the answer is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise AnswerError(f"the answer is not JSON ({exc.msg} at {exc.pos})") from None
    except RecursionError:
        raise AnswerError("the answer is nested too deeply") from None
    if not isinstance(value, dict):
        raise AnswerError(f"the answer must be a JSON object, not {_kind(value)}")
    allow = value.get("allow")
    if not isinstance(allow, bool):
        raise AnswerError('the answer needs "allow": true or false')
    return value


def _kind(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def _only(answer: Mapping[str, Any], allowed: Iterable[str]) -> None:
    extra = sorted(set(answer) - set(allowed))
    if extra:
        known = ", ".join(f'"{k}"' for k in allowed)
        raise AnswerError(f'unknown key "{extra[0][:40]}" in the answer (known: {known})')


def _denied(answer: Mapping[str, Any], *, connect: bool) -> Denied:
    _only(answer, ("allow", "reason", "status") if connect else ("allow", "reason"))
    reason = answer.get("reason", DENIED)
    if not isinstance(reason, str):
        raise AnswerError(f'"reason" must be a string, not {_kind(reason)}')
    status = answer.get("status", 403)
    if isinstance(status, bool) or status not in (401, 403):
        raise AnswerError('"status" must be 401 or 403')
    return Denied(reason[:MAX_REASON] or DENIED, status)


def parse_connect(body: bytes) -> ConnectDecision:
    """The connect hook's answer as a decision.

    Raises:
        AnswerError: not the documented shape (a malformed ``rooms`` claim included).
    """
    answer = _object(body)
    if not answer["allow"]:
        return _denied(answer, connect=True)
    _only(answer, ("allow", "user", "rooms", "data", "expires_at"))
    user = answer.get("user")
    if not isinstance(user, str) or not user or len(user) > MAX_USER:
        raise AnswerError(f'"user" must be a string of 1 to {MAX_USER} characters')
    capabilities = None
    if answer.get("rooms") is not None:
        try:
            capabilities = Capabilities.from_claim(answer["rooms"])
        except ClaimError as exc:
            raise AnswerError(str(exc)) from None
    return ConnectAllowed(user, capabilities, answer.get("data"), _expiry(answer.get("expires_at")))


def _expiry(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AnswerError(f'"expires_at" must be Unix seconds (a number), not {_kind(value)}')
    if not math.isfinite(value) or not 0 < value <= LATEST_EXPIRY:
        raise AnswerError('"expires_at" must be Unix seconds between 1970 and 9999')
    return float(value)


def _decision(body: bytes) -> Decision:
    answer = _object(body)
    if not answer["allow"]:
        return _denied(answer, connect=False)
    _only(answer, ("allow", "data"))
    if "data" in answer:
        return Allowed(answer["data"], has_data=True)
    return Allowed()


def parse_join(body: bytes) -> Decision:
    """The join hook's answer as a decision.

    Raises:
        AnswerError: not the documented shape.
    """
    return _decision(body)


def parse_publish(body: bytes) -> Decision:
    """The publish hook's answer as a decision.

    Raises:
        AnswerError: not the documented shape.
    """
    return _decision(body)


FAILED = {
    Failure.TIMEOUT: "the backend did not answer in time",
    Failure.SATURATED: "the backend is busy",
    Failure.STATUS: "the backend failed",
    Failure.INVALID: "the backend answered with something unexpected",
    Failure.UNREACHABLE: "the backend is unreachable",
}
"""The reason of a refusal by the failure policy (safe to send to clients: no details)."""


def on_failure(policy: Policy, failure: Failure) -> Decision:
    """What ``policy`` decides when the join or publish hook failed with ``failure``: a
    ``Denied`` with status 503, or an ``Allowed`` without data."""
    if policy is Policy.DENY:
        return Denied(FAILED[failure], 503, failure)
    return Allowed(failure=failure)


def on_connect_failure(policy: Policy, failure: Failure) -> ConnectDecision:
    """What ``policy`` decides when the connect hook failed with ``failure``: a ``Denied``
    with status 503, or a ``ConnectAllowed`` without a user (an anonymous client)."""
    if policy is Policy.DENY:
        return Denied(FAILED[failure], 503, failure)
    return ConnectAllowed(None, failure=failure)
