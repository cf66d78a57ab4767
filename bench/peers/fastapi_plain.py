"""The FastAPI documentation's broadcast loop (``apps.plain_app``), with the control port.

    BENCH_CONTROL_PORT=65102 uvicorn peers.fastapi_plain:app --app-dir bench ...

The WebSocket route is ``apps.plain_app``'s ``/ws`` as ``fanout.py`` measures it; a publish
runs ``apps.plain_broadcast`` (``for connection in connections: await
connection.send_text(message)``) once per message, in one task per request.
"""

from __future__ import annotations

from typing import Any

import apps
from peers.control import asgi_with_control


async def publish(batch: list[str]) -> None:
    for message in batch:
        await apps.plain_broadcast(message)


app: Any = asgi_with_control(apps.plain_app, publish, lambda: len(apps.connections))
