"""Raw picows broadcast server: the floor reference for ``roomcast serve``.

    python -m peers.picows_raw --port 65101 --control-port 65102     (from bench/)

A picows server on uvloop.  Every connection (any path) is a broadcast member; a broadcast
builds the WebSocket frame's bytes once (header + payload) and hands the same bytes object to
each member's socket transport: ``transport.underlying_transport.write(frame)``.  A burst of
messages is that loop once per message: one write per message per member.

picows' own memory options, as a user reading its documentation would set them:
``read_buffer_init_size=1024`` (picows clamps it to its minimum) and ``use_aiofastnet=False``
(uvloop's TCP transport; aiofastnet's embeds a 4 KiB scatter array per connection).
``enable_auto_ping`` stays off (picows' default), ``enable_auto_pong`` on (its default), the
logger is picows' default.  The control port: ``peers.control``.
"""

from __future__ import annotations

import argparse
from typing import Any

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

from harness.limits import raise_nofile
from peers.control import start_control

members: set[Any] = set()


def frame_bytes(payload: bytes) -> bytes:
    """A server-to-client text frame: FIN + opcode, length, unmasked payload (RFC 6455)."""
    length = len(payload)
    if length < 126:
        header = bytes((0x81, length))
    elif length < 1 << 16:
        header = bytes((0x81, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + length.to_bytes(8, "big")
    return header + payload


def publish(batch: list[str]) -> int:
    for message in batch:
        frame = frame_bytes(message.encode())
        for raw in members:
            raw.write(frame)
    return len(batch) * len(members)


class Member(WSListener):
    raw: Any = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.raw = transport.underlying_transport
        members.add(self.raw)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        members.discard(self.raw)


def listener(request: WSUpgradeRequest) -> Member:
    return Member()


async def serve(port: int, control_port: int) -> None:
    server = await ws_create_server(
        listener,
        "127.0.0.1",
        port,
        read_buffer_init_size=1024,
        use_aiofastnet=False,
        backlog=4096,
    )
    await start_control(control_port, publish, lambda: len(members))
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control-port", type=int, required=True)
    args = parser.parse_args()
    raise_nofile()
    uvloop.run(serve(args.port, args.control_port))


if __name__ == "__main__":
    main()
