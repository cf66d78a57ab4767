"""Room history: positions, what is kept, and how a client recovers what it missed.

See ``docs/history.md`` for the protocol.  ``positions`` is the vocabulary, ``memory`` the
in-process store, ``local`` and ``shared`` the engines a ``Hub`` uses without and with a
broker.
"""

from roomcast.history.contract import Joined
from roomcast.history.positions import (
    HistoryLimits,
    HistoryRule,
    Page,
    Position,
    history_for_all,
)

__all__ = ["HistoryLimits", "HistoryRule", "Joined", "Page", "Position", "history_for_all"]
