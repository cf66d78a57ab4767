"""The compatibility import path of roomcast's public API.

``library``, ``library.components`` and ``library.components.realtime`` are PEP 420 namespace
packages (no ``__init__.py``), so an application's own ``library`` package can coexist.
"""

from typing import Any

import roomcast
from roomcast import *  # noqa: F403
from roomcast import __all__ as __all__


def __getattr__(name: str) -> Any:
    # Names that roomcast loads lazily (RedisPubSub imports redis).
    return getattr(roomcast, name)
