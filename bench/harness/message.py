"""The benchmark message: ``"seq|send_time|xxx…"``, built by the driver or by a server.

The client workers (``clients.Recorder``) read the sequence number and ``send_time`` back from
it, bare or inside a server's envelope.  Standard library only (``apps.py`` imports it).
"""

from __future__ import annotations

import time

__all__ = ["make_message"]


def make_message(seq: int, size: int) -> str:
    """``"seq|send_time|"`` padded with ``x`` to ``size`` characters (ASCII, JSON-safe);
    ``send_time`` is ``time.time()`` now."""
    head = f"{seq}|{time.time():.6f}|"
    return head + "x" * max(0, size - len(head))
