"""How the orchestrator calls an app: one method, two implementations.

- `HttpTransport`: httpx, the body as signed JCS canonical JSON, with a timeout.
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


@dataclasses.dataclass(slots=True)
class CallResult:
    status: int
    headers: dict[str, str]
    body: Any


@dataclasses.dataclass(frozen=True, slots=True)
class Call:
    """One execution request to an app: `target` is the planned step to run (None: find and
    run what comes next); `checkpoint` keeps finished steps (in-process calls only)."""

    fn: FunctionRecord
    target: str | None
    request: dict[str, Any]
    checkpoint: Checkpoint | None = None


class Transport(Protocol):
    async def call(self, call: Call) -> CallResult: ...


def step_url(url: str, target: str | None) -> str:
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    query["stepId"] = target or "step"
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


class HttpTransport:
    def __init__(self, *, signing_key: str | None = None, timeout: float = 300.0) -> None:
        self._signing_key = signing_key
        self._client = httpx.AsyncClient(timeout=timeout)

    async def call(self, call: Call) -> CallResult:
        fn, body = call.fn, bytes(rfc8785.dumps(call.request))
        headers = {"content-type": "application/json", Header.SERVER_KIND: "dev"}
        if self._signing_key:
            headers[Header.SERVER_KIND] = "cloud"
            headers[Header.SIGNATURE] = signing.sign(body, self._signing_key)
        try:
            url = step_url(fn.url, call.target)
            res = await self._client.post(url, content=body, headers=headers)
        except httpx.HTTPError as err:
            return CallResult(
                599,
                {},
                {"name": type(err).__name__, "message": f"could not call {fn.url}: {err}"},
            )
        try:
            parsed = res.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            parsed = {"name": "InvalidResponse", "message": res.text[:2000]}
        return CallResult(res.status_code, {k.lower(): v for k, v in res.headers.items()}, parsed)

    async def aclose(self) -> None:
        await self._client.aclose()


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
        return CallResult(wire.status, wire.headers, wire.body)
