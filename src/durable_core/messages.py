"""`Request` and `Response`: one HTTP exchange, without a web framework.

Adapters convert their framework's request into a `Request` and a `Response` back.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(slots=True)
class Request:
    method: str
    body: bytes
    headers: Mapping[str, str]
    query: Mapping[str, str]
    url: str


@dataclasses.dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON answer (the content type is added when the response is finished)."""
    return Response(status, dict(headers or {}), json.dumps(body).encode())


__all__ = ["Request", "Response", "json_response"]
