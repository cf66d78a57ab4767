"""websockets 17 asyncio server broadcasting with ``websockets.broadcast()``.

    python -m peers.websockets_broadcast --port 65101 --control-port 65102     (from bench/)

The handler of websockets' broadcast documentation: add the connection to a set, wait until
it closes, remove it.  ``serve(..., compression=None)``; every other setting at websockets'
defaults (pings every 20 s, ``write_limit`` 32 KiB, ``max_size`` 1 MiB).  Runs on uvloop, like
every other server in the comparison.  The control port: ``peers.control``.
"""

from __future__ import annotations

import argparse

import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve

from harness.limits import raise_nofile
from peers.control import start_control

members: set[ServerConnection] = set()


async def handler(websocket: ServerConnection) -> None:
    members.add(websocket)
    try:
        await websocket.wait_closed()
    finally:
        members.discard(websocket)


def publish(batch: list[str]) -> int:
    for message in batch:
        broadcast(members, message)
    return len(batch) * len(members)


async def run(port: int, control_port: int) -> None:
    async with serve(handler, "127.0.0.1", port, compression=None, backlog=4096) as server:
        await start_control(control_port, publish, lambda: len(members))
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control-port", type=int, required=True)
    args = parser.parse_args()
    raise_nofile()
    uvloop.run(run(args.port, args.control_port))


if __name__ == "__main__":
    main()
