"""How the orchestrator calls an app: one method, two implementations.

- `HttpTransport`: one httpx client (its connections to apps kept alive, as many as the
  dispatcher runs requests at once), the body as signed JCS canonical JSON, with a timeout; an
  answer is read only up to the call's `max_body` (streamed: a longer one is dropped unread).
- `InProcessTransport`: the app shares the process; call the core executor directly (no HTTP,
  no JSON), and let the SDK checkpoint each finished step straight into the store.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.parse
from typing import Any, Protocol

import httpx
import rfc8785

from .. import signing
from .._execute import ExecutionRequest, execute, to_wire
from .._steps import Checkpoints
from ..app import Durable
from ..errors import ServeErrorCode
from ..protocol import Header
from .store import FunctionRecord

Checkpoint = Checkpoints
INPROC_SCHEME = "inproc"
SHARD = 8  # connections per httpx client of `HttpTransport`
#: Seconds an idle connection to an app is kept: under the 5 s after which uvicorn (and most
#: servers) close one, so a request is never sent on a connection the app is closing.
KEEPALIVE_EXPIRY = 2.0


@dataclasses.dataclass(slots=True)
class CallResult:
    status: int
    headers: dict[str, str]
    body: Any
    #: The answer was longer than the call's `max_body`: it was not read (`body` says so).
    too_large: bool = False
    #: From this process's own SDK, which kept the run's limits itself (in-process calls).
    within_limits: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Call:
    """One execution request to an app: `target` is the planned step to run (None: find and
    run what comes next); `checkpoint` keeps finished steps (in-process calls only);
    `max_body` bounds the bytes of an answer read over HTTP."""

    fn: FunctionRecord
    target: str | None
    request: dict[str, Any]
    checkpoint: Checkpoint | None = None
    max_body: int | None = None


class Transport(Protocol):
    async def call(self, call: Call) -> CallResult: ...


def step_url(url: str, target: str | None) -> str:
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    query["stepId"] = target or "step"
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


class HttpTransport:
    def __init__(
        self, *, signing_key: str | None = None, timeout: float = 300.0, connections: int = 64
    ) -> None:
        self._signing_key = signing_key
        # Connections to apps are kept and reused: as many as requests may run at once (the
        # dispatcher's concurrency), every one of them kept alive. They are spread over a few
        # clients of up to SHARD connections each: httpx's pool scans every connection of a
        # client for each request, which with dozens of connections cost more than the call.
        shards = max(1, -(-connections // SHARD))
        per = -(-connections // shards)
        limits = httpx.Limits(
            max_connections=per, max_keepalive_connections=per, keepalive_expiry=KEEPALIVE_EXPIRY
        )
        self._clients = [httpx.AsyncClient(timeout=timeout, limits=limits) for _ in range(shards)]
        self._next = 0

    async def call(self, call: Call) -> CallResult:
        fn, body = call.fn, bytes(rfc8785.dumps(call.request))
        headers = {
            "content-type": "application/json",
            "accept-encoding": "identity",  # what is read is what was sent: no inflation
            Header.SERVER_KIND: "dev",
        }
        if self._signing_key:
            headers[Header.SERVER_KIND] = "cloud"
            headers[Header.SIGNATURE] = signing.sign(body, self._signing_key)
        try:
            url = step_url(fn.url, call.target)
            client = self._clients[self._next]
            self._next = (self._next + 1) % len(self._clients)
            async with client.stream("POST", url, content=body, headers=headers) as res:
                status, got = res.status_code, {k.lower(): v for k, v in res.headers.items()}
                raw = await read_bounded(res, call.max_body)
        except httpx.HTTPError as err:
            return CallResult(
                599,
                {},
                {"name": type(err).__name__, "message": f"could not call {fn.url}: {err}"},
            )
        if raw is None:
            message = f"HTTP {status}: the answer was longer than {call.max_body} bytes; not read"
            return CallResult(status, got, {"name": "AnswerTooLarge", "message": message}, True)
        try:
            parsed = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            text = raw[:8000].decode("utf-8", errors="replace")
            parsed = {"name": "InvalidResponse", "message": text[:2000]}
        return CallResult(status, got, parsed)

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()


async def read_bounded(res: httpx.Response, bound: int | None) -> bytes | None:
    """The answer's body, or None as soon as it proves longer than `bound` (the rest is
    never read: leaving the stream closes the connection)."""
    if bound is None:
        return await res.aread()
    declared = res.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > bound:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in res.aiter_bytes():
        size += len(chunk)
        if size > bound:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class InProcessTransport:
    """Calls apps registered in this process by app id (URLs `inproc://<app_id>/...`)."""

    def __init__(self) -> None:
        self._apps: dict[str, Durable] = {}

    def add(self, durable: Durable) -> str:
        self._apps[durable.app_id] = durable
        return f"{INPROC_SCHEME}://{durable.app_id}"

    def serves(self, url: str) -> bool:
        return url.startswith(f"{INPROC_SCHEME}://")

    async def call(self, call: Call) -> CallResult:
        fn = call.fn
        durable = self._apps.get(fn.app_id)
        found = durable.find(fn.fn_id) if durable else None
        if durable is None or found is None:
            return CallResult(
                404,
                {},
                {
                    "name": ServeErrorCode.FUNCTION_NOT_FOUND,
                    "message": f"{fn.fn_id} is not served in this process",
                },
            )
        func, handler = found
        req = ExecutionRequest.model_validate(call.request)
        outcome = await execute(
            func,
            handler,
            req,
            call.target,
            sender=durable.send_async,
            sync_sender=durable.send,
            checkpoint=call.checkpoint,
        )
        wire = to_wire(func, outcome)
        return CallResult(wire.status, wire.headers, wire.body, within_limits=True)
