"""Room and user ids: bounded in UTF-8 bytes, free of control characters and lone surrogates."""

from __future__ import annotations

import pytest

from roomcast.errors import InvalidIdentifier
from roomcast.identifiers import check_identifier


@pytest.mark.parametrize(
    "value", ["lobby", "x" * 256, "é" * 128, "😀" * 64, "chat:日本語", "tab-free name", "$stats"]
)
def test_usable_ids_are_returned_as_given(value: str) -> None:
    """Ids up to 256 bytes of printable characters pass unchanged."""
    assert check_identifier("room", value) == value


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "non-empty string"),
        (None, "non-empty string"),
        (7, "non-empty string"),
        ("x" * 257, "257 bytes"),
        ("é" * 129, "258 bytes"),
        ("😀" * 65, "260 bytes"),
        ("a\x00b", "control characters"),
        ("\x1b[31mred", "control characters"),
        ("crlf\r\n", "control characters"),
        ("\x7f", "control characters"),
        ("\x9b", "control characters"),
        ("\ud800", "lone surrogate"),
        ("\udfff" * 100, "lone surrogate"),
    ],
)
def test_unusable_ids_are_refused_with_the_reason(value: object, why: str) -> None:
    """Empty, over the byte limit, control characters or lone surrogates: refused, and the
    error says which."""
    with pytest.raises(InvalidIdentifier, match=why):
        check_identifier("room", value)


def test_the_byte_limit_is_a_parameter() -> None:
    """A smaller limit counts bytes too: two 2-byte characters are 4 bytes."""
    assert check_identifier("user_id", "éé", max_bytes=4) == "éé"
    with pytest.raises(InvalidIdentifier, match="6 bytes"):
        check_identifier("user_id", "ééé", max_bytes=4)
