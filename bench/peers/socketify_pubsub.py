"""socketify (uWebSockets for Python) pub/sub: every client subscribes to one topic, a
broadcast is ``app.publish(topic, message)``.

    python -m peers.socketify_pubsub --port 65101     (from bench/)

socketify runs its own (libuv) loop and HTTP server, so the control routes are socketify
routes on the same port instead of ``peers.control``: ``GET /bench/publish?batch=<JSON list>``
(a synchronous handler; an ``async`` one reading a POST body with ``await res.get_json()``
crashed socketify 0.0.31 here: "Fatal Python error: b_from_handle ... garbage collected") and
``GET /bench/count``.  WebSocket compression is disabled and ``send_pings_automatically`` on (uWS
pings a client before its 120 s idle timeout; socketify's default, off, closes every client
that sent nothing for 120 s); every other setting at socketify's defaults.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from socketify import App, CompressOptions, OpCode

from harness.limits import raise_nofile

TOPIC = "bench"


def build(port: int) -> App:
    app = App()

    def on_open(ws: Any) -> None:
        ws.subscribe(TOPIC)

    def on_message(ws: Any, message: Any, opcode: Any) -> None:
        pass

    def publish(res: Any, req: Any) -> None:
        batch = json.loads(req.get_query("batch"))
        for message in batch:
            app.publish(TOPIC, message, OpCode.TEXT)
        res.end(json.dumps({"delivered": len(batch) * app.num_subscribers(TOPIC)}))

    def count(res: Any, req: Any) -> None:
        res.end(json.dumps({"connections": app.num_subscribers(TOPIC)}))

    app.ws(
        "/*",
        {
            "compression": CompressOptions.DISABLED,
            # socketify's default is False: with it, uWS closes every client that sent
            # nothing for idle_timeout (120 s), as a broadcast-only client never does.
            "send_pings_automatically": True,
            "open": on_open,
            "message": on_message,
        },
    )
    app.get("/bench/publish", publish)
    app.get("/bench/count", count)
    app.listen(port, lambda config: print(f"listening on {config.port}", flush=True))
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    raise_nofile()
    build(args.port).run()


if __name__ == "__main__":
    main()
