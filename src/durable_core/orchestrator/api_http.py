"""The API's HTTP plumbing: bodies read within limits, every answer JSON, and errors mapped to
statuses. A bad request is a 4xx `{"error": "...", "status": N}` naming the problem; a database
that cannot be reached is a 503 with `retry-after`; anything else (a bug) is a logged 500.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import _bounded_json
from .api_input import Problem
from .store import Store

_log = logging.getLogger("durable.orchestrator")

MAX_BODY = _bounded_json.MAX_BODY
RETRY_AFTER_SECONDS = 5
_SQLITE_BUSY = ("locked", "busy", "unable to open", "disk i/o", "disk is full")

Handler = Callable[[Request], Awaitable[Response]]


class JsonAnswer(JSONResponse):
    """A JSON response that cannot fail to render: a non-finite float stored before the API
    refused them is written as null, and text that is not valid Unicode as escapes, rather
    than turning a listing into a 500."""

    def render(self, content: Any) -> bytes:
        try:
            text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            return text.encode()
        except ValueError:  # NaN, or a lone surrogate (UnicodeEncodeError), which escapes carry
            return json.dumps(_finite(content), allow_nan=False, separators=(",", ":")).encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return JsonAnswer({"error": message, "status": status}, status_code=status, headers=headers)


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The request body, refused (413) as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise Problem(413, f"body too large ({int(declared)} bytes; the limit is {limit})")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Problem(413, f"body too large (over {limit} bytes; the limit is {limit})")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, what: str | None) -> Any:
    """The JSON body within the limits of `_bounded_json`, no NUL in any text; a problem is a
    Problem naming where it is: `invoke: data.amount: ...`, or for events (`what` None)
    `events[0].data.amount: ...`."""
    body = await read_body(request)
    try:
        return _bounded_json.loads(body, allow_nul=False)
    except _bounded_json.BadJson as err:
        if what is None:
            root = "events" if err.path and isinstance(err.path[0], int) else "event"
            raise Problem(err.status, err.where(root)) from None
        raise Problem(err.status, f"{what}: {err.where()}") from None


def unavailable(store: Store, err: BaseException) -> bool:
    """Whether `err` says the database cannot be reached (or is busy) rather than a bug."""
    if store.transient(err):
        return True
    if isinstance(err, sqlite3.OperationalError):
        return any(word in str(err).lower() for word in _SQLITE_BUSY)
    try:
        import psycopg
        import psycopg_pool
    except ImportError:
        return False
    lost = (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout)
    return isinstance(err, lost)


def guarded(store: Store, handler: Handler) -> Handler:
    """`handler` with every failure answered as JSON."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except Problem as problem:
            return error(problem.status, str(problem))
        except Exception as err:
            if unavailable(store, err):
                _log.warning(
                    "%s %s: the database is unavailable: %r", request.method, request.url.path, err
                )
                msg = (
                    f"the orchestrator's database cannot be reached right now "
                    f"({type(err).__name__}); retry in a few seconds"
                )
                return error(503, msg, {"retry-after": str(RETRY_AFTER_SECONDS)})
            _log.exception("%s %s failed", request.method, request.url.path)
            msg = f"internal error ({type(err).__name__}); the orchestrator's log has the details"
            return error(500, msg)

    return endpoint


async def http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own answers (unknown path 404, wrong method 405) as JSON errors."""
    assert isinstance(exc, HTTPException)
    message = {
        404: f"no endpoint {request.url.path}: see the API's routes (/e, /fn/register, /v1/...)",
        405: f"{request.method} is not allowed on {request.url.path}",
    }.get(exc.status_code, str(exc.detail))
    return error(exc.status_code, message, exc.headers)


__all__ = [
    "MAX_BODY",
    "RETRY_AFTER_SECONDS",
    "JsonAnswer",
    "error",
    "guarded",
    "http_exception",
    "read_body",
    "read_json",
    "unavailable",
]
