"""Room and user ids: what a usable one is.

Ids come from clients (query strings, JSON commands) and end up as dictionary keys, Redis
channel names, log lines and envelope fields, so they are bounded in **bytes** (a character
can take four; a limit in characters let 256 of them cost 1 KiB each) and may not contain
control characters (NUL, line breaks and escape sequences would forge log lines or break
channel names) or lone surrogates (which JSON can carry but UTF-8 cannot encode).
"""

from __future__ import annotations

import re

from roomcast.errors import InvalidIdentifier
from roomcast.messages import preview

__all__ = ["DEFAULT_MAX_ID_BYTES", "check_identifier"]

DEFAULT_MAX_ID_BYTES = 256

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def check_identifier(what: str, value: object, max_bytes: int = DEFAULT_MAX_ID_BYTES) -> str:
    """``value`` if it is a usable room or user id.

    Raises:
        InvalidIdentifier: not a non-empty string, longer than ``max_bytes`` in UTF-8, or
            holding a control character or a lone surrogate; the text says which.
    """
    if not isinstance(value, str) or not value:
        raise InvalidIdentifier(f"{what} must be a non-empty string, got {preview(value)}")
    if len(value) * 4 > max_bytes:  # only long ids pay for the encoding
        try:
            size = len(value.encode())
        except UnicodeEncodeError:
            raise InvalidIdentifier(f"{what} is not valid Unicode (a lone surrogate)") from None
        if size > max_bytes:
            raise InvalidIdentifier(
                f"{what} is {size} bytes long in UTF-8; the limit is {max_bytes}"
            )
    elif not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise InvalidIdentifier(f"{what} is not valid Unicode (a lone surrogate)") from None
    if _CONTROL.search(value) is not None:
        raise InvalidIdentifier(f"{what} may not contain control characters")
    return value
