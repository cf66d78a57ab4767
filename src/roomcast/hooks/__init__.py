"""The backend in the loop: hooks that decide connects, joins and client publishes.

``decisions`` (pure: the JSON of requests and answers, the failure policy) and ``metrics``
(pure counters) import nothing beyond the core; ``HookClient`` is the HTTP side, on aiohttp
(the ``hooks`` extra), imported only when it is first named here, so that importing this
package for its vocabulary does not load an HTTP client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from roomcast.hooks.decisions import (
    FORWARDED_HEADERS,
    Allowed,
    AnswerError,
    ConnectAllowed,
    ConnectDecision,
    Decision,
    Denied,
    Failure,
    Hook,
    Policy,
)
from roomcast.hooks.metrics import HookStats

if TYPE_CHECKING:
    from roomcast.hooks.client import HookClient

__all__ = [
    "FORWARDED_HEADERS",
    "Allowed",
    "AnswerError",
    "ConnectAllowed",
    "ConnectDecision",
    "Decision",
    "Denied",
    "Failure",
    "Hook",
    "HookClient",
    "HookStats",
    "Policy",
]


def __getattr__(name: str) -> Any:
    if name == "HookClient":
        from roomcast.hooks.client import HookClient

        return HookClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
