"""docs/events.md: its verification code works, and its metrics table is the dispatcher's."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from roomcast.events.memory import MemoryOutbox
from roomcast.events.signing import signature_header
from roomcast.events.stats import DispatcherStats, samples

DOC = (Path(__file__).resolve().parents[2] / "docs" / "events.md").read_text()
BODY = b'{"events":[{"type":"occupied","id":"a1","time":1.0,"seq":1,"room":"lobby"}]}'


def code_block(language: str, containing: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", DOC, flags=re.DOTALL)
    (block,) = [b for b in blocks if containing in b]
    return str(block)


@pytest.fixture(scope="module")
def verify_roomcast() -> Callable[..., None]:
    namespace: dict[str, object] = {}
    exec(code_block("python", "def verify_roomcast"), namespace)
    function = namespace["verify_roomcast"]
    assert callable(function)
    return function


def test_the_documented_check_accepts_a_fresh_delivery(
    verify_roomcast: Callable[..., None],
) -> None:
    """What the dispatcher signs now passes the documented Python check, during a rotation
    too."""
    verify_roomcast(b"new", BODY, signature_header([b"new"], BODY))
    verify_roomcast(b"old", BODY, signature_header([b"new", b"old"], BODY))


@pytest.mark.parametrize(
    ("secret", "body", "header"),
    [
        (b"new", BODY.replace(b"lobby", b"lobbY"), signature_header([b"new"], BODY)),
        (b"new", BODY, signature_header([b"new"], BODY, timestamp=1_000_000_000)),
        (b"other", BODY, signature_header([b"new"], BODY)),
        (b"new", BODY, "v1=abc"),
    ],
    ids=["tampered body", "old timestamp", "another secret", "malformed"],
)
def test_the_documented_check_refuses(
    verify_roomcast: Callable[..., None], secret: bytes, body: bytes, header: str
) -> None:
    """A tampered body, an old timestamp, another secret or a malformed header: refused."""
    with pytest.raises(ValueError):
        verify_roomcast(secret, body, header)


def test_the_metrics_table_lists_every_sample() -> None:
    """Each metric the dispatcher exposes is documented, and only those."""
    documented = set(re.findall(r"^\| `(roomcast_[a-z_]+)` \|", DOC, flags=re.MULTILINE))
    exposed = {name for _, name, _, _ in samples(DispatcherStats(), MemoryOutbox())}
    assert documented == exposed
