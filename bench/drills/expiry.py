"""Numeric-string ``exp``: ``--jwt-secret S --token-grace 1``; a client connects with an HS256
token whose ``exp`` is a numeric string 2 s ahead; when is it warned (4001), when closed."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
from typing import Any

from drills.base import Case, Run, Serve
from harness.raw_ws import Refused, WsClient, connect

__all__ = ["drill_exp"]

JWT_SECRET = "hardening-drill-secret-0123456789abcdef"


def hs256_token(claims: dict[str, Any], secret: str) -> str:
    """A JWT signed with HS256, built by hand: the claims go in as given (any JSON types)."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = part(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = part(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{part(signature)}"


async def drill_exp(run: Run) -> list[Case]:
    serve = Serve(run, "exp", ("--jwt-secret", JWT_SECRET), ("--token-grace", "1"))
    client: WsClient | None = None
    warned: list[float] = []

    def on_text(payload: bytes) -> None:
        message = json.loads(payload)
        if message.get("type") == "error" and message.get("code") == 4001:
            warned.append(time.time())

    try:
        await serve.ready()
        exp = int(time.time()) + 2
        token = hs256_token({"sub": "drill", "exp": str(exp)}, JWT_SECRET)
        try:
            client = await connect(serve.port, f"/ws?token={token}", on_text=on_text)
        except Refused as exc:
            return [Case("exp as a numeric string", {"connect": f"refused ({exc.status})"})]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(client.ended), exp + 10 - time.time())
        ended = (
            f"closed {client.close_code or 'without a close frame'} at exp + "
            f"{client.ended_at - time.monotonic() + time.time() - exp:.1f} s"
            if client.ended.done()
            else "still open 10 s after exp"
        )
        return [
            Case(
                'token {"exp": "<now + 2>"} (a string), --token-grace 1',
                {
                    "connect": "accepted (101)",
                    "expiry warning (error 4001)": f"at exp + {warned[0] - exp:.1f} s"
                    if warned
                    else "none",
                    "connection": ended,
                },
            )
        ]
    finally:
        if client is not None:
            client.abort()
        await serve.stop()
