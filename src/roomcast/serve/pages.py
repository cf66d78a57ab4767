"""The GET routes of both ports: health, readiness, metrics, the JavaScript client, the demo.

picows serves these from its upgrade callback (a request that is not an upgrade gets the
answer built here); the API port serves the same through ``http_api``.  A POST (PUT, PATCH,
DELETE) to the WebSocket port gets 405 and where the publish API is (``misdirected``).  Pages
are read once at start-up; the demo page gets a Content-Security-Policy that allows only this
server.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources

from picows import WSUpgradeResponse, WSUpgradeResponseWithListener
from prometheus_client import CollectorRegistry

from roomcast.hub import Hub
from roomcast.serve.metrics import render
from roomcast.serve.workers import WorkerView

__all__ = ["GET_PATHS", "TEXT", "Pages", "misdirected", "respond"]

TEXT = "text/plain; charset=utf-8"
_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
_NOT_FOUND = b"not found\n"
GET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class Pages:
    """Answers GETs: ``/healthz``, ``/readyz``, ``/metrics`` and the static files.

    Args:
        hub: Its readiness (the broker's) is part of ``/readyz``.
        metrics: Rendered for ``/metrics``.
        demo: Serve the demo page at ``/`` (``/client.js`` is always served).
        accepting: False while the server drains (``/readyz`` answers 503).
        workers: The other workers of ``--workers``, if any: then ``/metrics`` and
            ``/readyz`` answer for all of them, whichever worker a request reached.
    """

    def __init__(
        self,
        hub: Hub,
        metrics: CollectorRegistry,
        demo: bool,
        accepting: Callable[[], bool],
        workers: WorkerView | None = None,
    ) -> None:
        self._hub = hub
        self._metrics = metrics
        self._accepting = accepting
        self._workers = workers
        self._static = _load_static(demo)

    def unready(self) -> str | None:
        """Why this process is not ready (None: it is), whatever the other workers say."""
        if not self._accepting():
            return "draining"
        if not self._hub.ready:
            return "broker unavailable"
        return None

    def get(self, path: str) -> tuple[int, bytes, str]:
        """Status, body and content type of ``GET path``."""
        if path == "/healthz":
            return 200, b"ok\n", TEXT
        if path == "/readyz":
            why = self.unready()
            if why is None and self._workers is not None:
                why = self._workers.unready()
            if why is not None:
                return 503, why.encode() + b"\n", TEXT
            return 200, b"ready\n", TEXT
        if path == "/metrics":
            if self._workers is not None:
                return 200, self._workers.render(self._metrics), _PROMETHEUS
            return 200, render(self._metrics), _PROMETHEUS
        static = self._static.get(path)
        if static is not None:
            return 200, static[0], static[1]
        return 404, _NOT_FOUND, TEXT


_STATIC_FILES = {
    "/client.js": ("client.js", "text/javascript; charset=utf-8"),
    "/": ("index.html", "text/html; charset=utf-8"),
    "/demo.js": ("demo.js", "text/javascript; charset=utf-8"),
    "/demo.css": ("demo.css", "text/css; charset=utf-8"),
}


def _load_static(demo: bool) -> dict[str, tuple[bytes, str]]:
    """The files served over GET, read once at start-up (package data in ``static/``)."""
    folder = resources.files("roomcast") / "static"
    return {
        path: ((folder / name).read_bytes(), content_type)
        for path, (name, content_type) in _STATIC_FILES.items()
        if demo or path == "/client.js"
    }


_PAGE_POLICY = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
"""The demo page loads nothing from elsewhere (no CDN) and talks only to this server."""


def misdirected(method: bytes, api_port: int | None) -> bytes:
    """The whole HTTP response to a request with a body on the WebSocket port: 405, and a
    JSON body saying where the publish API is (or how to turn it on)."""
    verb = method.decode("ascii", "replace")
    where = (
        f"POST /api/publish is served on the API port, {api_port} (--api-port)"
        if api_port is not None
        else "the publish API is off: start roomcast serve with --api-port PORT and "
        "ROOMCAST_API_KEY, then POST /api/publish there"
    )
    answer: dict[str, object] = {
        "error": f"this port takes WebSocket upgrades and GETs, not {verb}; {where}"
    }
    if api_port is not None:
        answer["api_port"] = api_port
    body = json.dumps(answer).encode() + b"\n"
    return (
        b"HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\n"
        b"Content-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def respond(status: int, body: bytes, content_type: str = TEXT) -> WSUpgradeResponseWithListener:
    headers = {"Content-Type": content_type, "X-Content-Type-Options": "nosniff"}
    if content_type.startswith("text/html"):
        headers["Content-Security-Policy"] = _PAGE_POLICY
    elif content_type.startswith("text/javascript"):
        headers["Access-Control-Allow-Origin"] = "*"  # a page anywhere may import the client
    if status == 200:
        response = WSUpgradeResponse.create_ok_response(body, headers)
    else:
        response = WSUpgradeResponse.create_error_response(status, body, headers)
    return WSUpgradeResponseWithListener(response, None)
