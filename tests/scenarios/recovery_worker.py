"""A process of drill clients: ``roomcast.client`` clients in one room, some of them behind
a proxy that cuts them off and sends them to another server.  Run by
``tests/scenarios/test_recovery_drills.py`` as ``python -m tests.scenarios.recovery_worker
CONFIG_JSON``; prints one JSON line per phase on stdout and reads commands on stdin:

- ``cut PORT``: reset every proxied connection, refuse new ones, point the proxy at PORT;
- ``restore``: accept again (the cut clients reconnect and rejoin with ``since``);
- ``report``: print what every client received (``{"offsets": [[epoch, offset], ...]}``) once
  each has seen the offset given in the command's second word, and exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

from roomcast.client import Client, Message, Rejoined
from tests.proxy import Cutter


async def main(config: dict[str, Any]) -> None:
    room, ports = config["room"], config["ports"]
    cutter = Cutter(config["proxied_port"])
    async with cutter, contextlib.AsyncExitStack() as stack:
        clients: list[Client] = []
        for n in range(config["direct"]):
            url = f"ws://127.0.0.1:{ports[n % len(ports)]}/ws"
            clients.append(Client(url, user_id=f"{config['name']}-d{n}", ack_timeout=30))
        for n in range(config["proxied"]):
            clients.append(Client(cutter.url, user_id=f"{config['name']}-p{n}", ack_timeout=30))
        seen: list[list[tuple[str, int]]] = [[] for _ in clients]
        rejoined: list[list[bool]] = [[] for _ in clients]
        for client in clients:
            await stack.enter_async_context(client)
            await client.join(room)
        readers = [
            asyncio.ensure_future(read(client, seen[n], rejoined[n]))
            for n, client in enumerate(clients)
        ]
        print(json.dumps({"ready": len(clients)}), flush=True)
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := (await reader.readline()).decode().split():
            if line[0] == "cut":
                cutter.refusing = True
                cutter.cut()
                cutter.target = int(line[1])
            elif line[0] == "restore":
                cutter.refusing = False
            elif line[0] == "report":
                last = int(line[1])
                async with asyncio.timeout(float(line[2])):
                    while any(not got or got[-1][1] < last for got in seen):  # noqa: ASYNC110
                        await asyncio.sleep(0.05)  # (the readers' progress, polled)
                for task in readers:
                    task.cancel()
                print(json.dumps({"offsets": seen, "rejoined": rejoined}), flush=True)
                return
            print(json.dumps({"done": line[0]}), flush=True)


async def read(client: Client, seen: list[tuple[str, int]], rejoined: list[bool]) -> None:
    async for event in client:
        if isinstance(event, Message) and event.position is not None:
            seen.append((event.position.epoch, event.position.offset))
        elif isinstance(event, Rejoined):
            rejoined.append(event.recovered)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
