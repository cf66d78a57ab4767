"""Process and host limits a benchmark raises: open files, and the ephemeral port range; and
client sockets that do not run out of ephemeral ports.

Standard library only: the servers under test (``apps.py``, ``peers/``) import it too.
"""

from __future__ import annotations

import contextlib
import resource
import socket
from collections.abc import Iterator
from pathlib import Path

__all__ = ["bound_socket", "raise_nofile", "wide_port_range"]

PORT_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
WANTED_PORT_RANGE = "1024 65000"
"""Benchmark servers listen on 65101 and up, outside this range (see TESTING.md)."""
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def raise_nofile() -> int:
    """Raise this process' soft ``RLIMIT_NOFILE`` to the hard limit (children inherit it);
    returns the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


@contextlib.contextmanager
def wide_port_range(enabled: bool) -> Iterator[str]:
    """Widen the ephemeral port range for the run (root only) and restore it afterwards;
    yields the range in force."""
    try:
        old = " ".join(PORT_RANGE_FILE.read_text().split())
    except OSError:
        yield "unknown"
        return
    if not enabled or old == WANTED_PORT_RANGE:
        yield old
        return
    try:
        PORT_RANGE_FILE.write_text(WANTED_PORT_RANGE)
    except OSError:
        yield old
        return
    try:
        yield WANTED_PORT_RANGE
    finally:
        with contextlib.suppress(OSError):
            PORT_RANGE_FILE.write_text(old)


def bound_socket(source: str, rcvbuf: int = 0) -> socket.socket:
    """A non-blocking TCP socket bound to ``source``, its port picked at ``connect()`` time
    from the whole 4-tuple space of that address (``IP_BIND_ADDRESS_NO_PORT``), so that many
    clients on a few source addresses do not run out of ephemeral ports.  ``rcvbuf``: a
    ``SO_RCVBUF`` set before ``connect()``, so that the advertised window stays small."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((source, 0))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
