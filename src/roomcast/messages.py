"""Typed message schemas: what roomcast itself says on the wire, and how JSON is written.

The dataclasses give applications one validated shape for heartbeats, acknowledgements and
errors, so that neither side dispatches on untyped dicts.  ``WSMessage.from_json`` is the only
parser: it turns anything a client may send into either the right subclass or one
``InvalidMessage`` whose text names the problem (never a bare KeyError or TypeError, and never an
echo of a 10 KB string).
"""

from __future__ import annotations

import builtins
import dataclasses
import datetime as _dt
import enum
import json
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from roomcast.errors import InvalidMessage

__all__ = [
    "AckMessage",
    "ErrorMessage",
    "MessageType",
    "PingMessage",
    "PongMessage",
    "WSMessage",
    "dumps",
]


class MessageType(enum.Enum):
    """How a payload handed to a send method goes on the wire.

    ``TEXT`` and ``JSON`` produce text frames (``JSON`` encodes dicts, lists and dataclasses;
    a ``str`` is taken as already-encoded JSON); ``BYTES`` produces a binary frame.  ``PING``
    and ``PONG`` are application-level heartbeat messages sent as JSON text, because ASGI gives
    an application no way to send protocol pings.  ``CLOSE`` closes the target connections,
    using a ``str`` payload as the close reason.
    """

    TEXT = "text"
    JSON = "json"
    BYTES = "bytes"
    PING = "ping"
    PONG = "pong"
    CLOSE = "close"


def _json_default(value: Any) -> Any:
    if isinstance(value, WSMessage):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


_encoder = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default
)


def dumps(value: Any) -> str:
    """Encode ``value`` as compact JSON, or raise ``InvalidMessage`` saying why it cannot be.

    Dataclasses, datetimes, enums, UUIDs and sets are understood; NaN and infinity are refused
    because browsers' ``JSON.parse`` rejects them.
    """
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidMessage(f"payload is not JSON-encodable: {exc}") from None


def preview(value: object, limit: int = 40) -> str:
    """A short, escaped rendering of untrusted input for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _new_event_id() -> str:
    return uuid.uuid4().hex


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_optional_int(value: object) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def _is_optional_str(value: object) -> bool:
    return value is None or isinstance(value, str)


def _is_anything(value: object) -> bool:
    return True


# Field annotations (as strings, see the __future__ import) and what a parsed value must be.
_CHECKS: dict[str, tuple[Callable[[object], bool], str]] = {
    "str": (_is_str, "a string"),
    "float": (_is_number, "a number"),
    "int | None": (_is_optional_int, "an integer or null"),
    "str | None": (_is_optional_str, "a string or null"),
    "Any": (_is_anything, "any JSON value"),
}

M = TypeVar("M", bound="WSMessage")


@dataclasses.dataclass(kw_only=True, slots=True)
class WSMessage:
    """Base of roomcast's typed messages; ``type`` on the wire selects the subclass.

    Attributes:
        event_id: Identifies the message, so that an ``AckMessage`` or ``ErrorMessage`` can
            refer to it.  A random hex id unless given.
        timestamp: Seconds since the epoch when the message was created.
        data: Application payload (any JSON value).
    """

    TYPE: ClassVar[str] = "message"
    _BY_TYPE: ClassVar[dict[str, type[WSMessage]]] = {}

    event_id: str = dataclasses.field(default_factory=_new_event_id)
    timestamp: float = dataclasses.field(default_factory=time.time)
    data: Any = None

    def __init_subclass__(cls) -> None:
        # No zero-argument super() here: slots=True re-creates the class, which breaks it.
        # slots=True re-creates the class, so the last definition of a TYPE wins: that is the
        # dataclass, which is the one from_json must build.
        WSMessage._BY_TYPE[cls.TYPE] = cls

    @property
    def type(self) -> str:
        """The wire name of this message kind, such as ``"ping"``."""
        return self.TYPE

    def to_dict(self) -> dict[str, Any]:
        """The message as a JSON-ready dict, with ``type`` first."""
        result: dict[str, Any] = {"type": self.TYPE}
        for field in dataclasses.fields(self):
            result[field.name] = getattr(self, field.name)
        return result

    def to_json(self) -> str:
        """The message as compact JSON text."""
        return dumps(self.to_dict())

    @classmethod
    def from_json(cls: builtins.type[M], raw: str | bytes | bytearray) -> M:
        """Parse and validate one message.

        Called on ``WSMessage`` it returns the subclass named by ``type``; called on a subclass
        it also insists on that subclass.

        Raises:
            InvalidMessage: the text is not JSON, not an object, names an unknown type, lacks
                a required field, has an unknown field, or a field has the wrong JSON type.
        """
        try:
            parsed = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            # ValueError covers bad JSON, bad UTF-8 and integers over the digit limit;
            # RecursionError covers "[[[[..." nested beyond the parser's stack.
            reason = "too deeply nested" if isinstance(exc, RecursionError) else str(exc)
            raise InvalidMessage(f"message is not valid JSON: {preview(reason, 80)}") from None
        except TypeError:
            raise InvalidMessage(
                f"message must be str or bytes, not {type(raw).__name__}"
            ) from None
        if not isinstance(parsed, dict):
            raise InvalidMessage(f"message must be a JSON object, not {type(parsed).__name__}")
        return cls.from_dict(parsed)

    @classmethod
    def from_dict(cls: builtins.type[M], data: Mapping[str, Any]) -> M:
        """Validate a decoded JSON object and build the message it describes.

        Raises:
            InvalidMessage: as for ``from_json``.
        """
        kind = data.get("type")
        if not isinstance(kind, str):
            raise InvalidMessage("message needs a string field 'type'")
        target = WSMessage._BY_TYPE.get(kind)
        if target is None:
            known = ", ".join(sorted(WSMessage._BY_TYPE))
            raise InvalidMessage(f"unknown message type {preview(kind)}; known: {known}")
        if cls is not WSMessage and target is not cls:
            raise InvalidMessage(f"expected a {cls.TYPE!r} message, got {preview(kind)}")
        kwargs: dict[str, Any] = {}
        fields = {field.name: field for field in dataclasses.fields(target)}
        for name, value in data.items():
            if name == "type":
                continue
            field = fields.get(name)
            if field is None:
                raise InvalidMessage(f"unknown field {preview(name)} in a {kind!r} message")
            check, expected = _CHECKS[str(field.type)]
            if not check(value):
                raise InvalidMessage(
                    f"field {name!r} of a {kind!r} message must be {expected}, "
                    f"got {type(value).__name__}"
                )
            kwargs[name] = value
        for name, field in fields.items():
            required = (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            )
            if required and name not in kwargs:
                raise InvalidMessage(f"a {kind!r} message needs the field {name!r}")
        return target(**kwargs)  # type: ignore[return-value]


WSMessage._BY_TYPE[WSMessage.TYPE] = WSMessage


@dataclasses.dataclass(kw_only=True, slots=True)
class PingMessage(WSMessage):
    """Application-level heartbeat request; the peer answers with a ``PongMessage``."""

    TYPE: ClassVar[str] = "ping"


@dataclasses.dataclass(kw_only=True, slots=True)
class PongMessage(WSMessage):
    """Answer to a ``PingMessage``; carries the ping's ``event_id`` in ``ping_event_id``."""

    TYPE: ClassVar[str] = "pong"
    ping_event_id: str | None = None


@dataclasses.dataclass(kw_only=True, slots=True)
class ErrorMessage(WSMessage):
    """Tells a client that one of its messages was refused, and why.

    Attributes:
        error: Human-readable reason, safe to show (never echoes the client's input in full).
        code: Optional machine-readable code (roomcast uses its close codes' numbers).
        ref_event_id: ``event_id`` of the client message this answers, when known.
        cause: A stable word for a refusal by the room rules (``not_granted``,
            ``room_full``...: ``roomcast.rules.Cause``), for programs to branch on; left out
            of the JSON when None, so other errors keep their shape.
    """

    TYPE: ClassVar[str] = "error"
    error: str
    code: int | None = None
    ref_event_id: str | None = None
    cause: str | None = None

    def to_dict(self) -> dict[str, Any]:
        result = WSMessage.to_dict(self)
        if self.cause is None:
            del result["cause"]
        return result


@dataclasses.dataclass(kw_only=True, slots=True)
class AckMessage(WSMessage):
    """Confirms that the server accepted the client message ``ack_event_id``."""

    TYPE: ClassVar[str] = "ack"
    ack_event_id: str
