"""What the API port's handler gets and gives: one request, and its answer (or a coroutine
that makes it, for answers that need I/O such as a history read)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Coroutine
from typing import Any

__all__ = ["Answer", "ApiRequest", "ApiResponse"]


@dataclasses.dataclass(slots=True)
class ApiRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    query: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class ApiResponse:
    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, value: Any) -> ApiResponse:
        return cls(status, json.dumps(value).encode() + b"\n")


Answer = ApiResponse | Coroutine[Any, Any, ApiResponse]
"""What a handler gives: an answer, or a coroutine that will make one."""
