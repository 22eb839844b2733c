"""What `step.fetch` returns, and the checks `step.fetch` and `step.ai.infer` make of their
arguments before any request leaves the function.

The orchestrator makes both requests (`orchestrator/gateway.py`) while the run holds no
worker; the step's stored result is the answer: the model's JSON for `step.ai.infer`, a
`FetchResponse` for `step.fetch`.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.parse
from collections.abc import Mapping
from typing import Any, Final

METHODS: Final = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


@dataclasses.dataclass(frozen=True, slots=True)
class FetchResponse:
    """The answer to a `step.fetch` request: any status below 500 except 429 (a 5xx, a 429
    or a network error is retried like a failed step, and fails the step once retries run
    out)."""

    url: str
    status_code: int
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    body: str = ""

    @classmethod
    def from_json(cls, data: object) -> FetchResponse:
        """The response a stored `step.fetch` result describes."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a step.fetch result must be an object, not {data!r}")
        headers = data.get("headers") or {}
        return cls(
            url=str(data.get("url") or ""),
            status_code=int(data.get("status_code") or 0),
            headers={str(k): str(v) for k, v in dict(headers).items()},
            body=str(data.get("body") or ""),
        )

    @property
    def ok(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status_code < 300

    @property
    def text(self) -> str:
        return self.body

    def json(self) -> Any:
        """The body parsed as JSON (`json.JSONDecodeError` if it is not JSON)."""
        return json.loads(self.body)


def url_problem(url: object) -> str | None:
    """What is wrong with a URL to request (None if nothing)."""
    if not isinstance(url, str) or not url:
        return f"url must be a non-empty string, not {url!r}"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"url {url!r} is not an http:// or https:// URL"
    return None


def headers_problem(headers: object) -> str | None:
    if headers is None:
        return None
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        return f"headers must map strings to strings, not {headers!r}"
    return None


__all__ = ["METHODS", "FetchResponse", "headers_problem", "url_problem"]
