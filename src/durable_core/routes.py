"""Route workflows: one HTTP route is one workflow (the Upstash Workflow style).

A plain POST to the route starts a run with the request body as `context.request_payload` and
answers `{"workflowRunId": ...}`; the orchestrator then calls the same route with the serve
protocol. `context.run`, `sleep`, `sleep_until`, `wait_for_event`, `notify` and `call` are steps.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypedDict, TypeVar, Unpack

import httpx
import pydantic

from ._durations import DurationLike
from .client import Client
from .context import Context, SyncContext
from .errors import DurableError, NonRetriableError
from .events import Event
from .fetch import FetchResponse
from .function import Function
from .messages import Request, Response, json_response

T = TypeVar("T")
P = TypeVar("P")
WORKFLOW_EVENT = "durable/workflow.started"


class CallResponse(pydantic.BaseModel):
    """What `context.call` returns: the final answer of a durable HTTP call."""

    status: int
    body: Any = None
    headers: dict[str, str] = pydantic.Field(default_factory=dict)


def _decode(response: httpx.Response) -> CallResponse:
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = response.text
    return CallResponse(status=response.status_code, body=body, headers=dict(response.headers))


class _CallFailedError(Exception):
    """A call answered 5xx or could not connect: the step retries."""


def _check(response: CallResponse, url: str) -> CallResponse:
    if response.status >= 500:
        raise _CallFailedError(f"{url} answered HTTP {response.status}: {str(response.body)[:500]}")
    return response


class CallOptions(TypedDict, total=False):
    """How `call` makes its request: `method` (default POST), a JSON `body`, `headers`, and a
    `timeout` in seconds (default 30)."""

    method: str
    body: Any
    headers: Mapping[str, str] | None
    timeout: float


def _request(url: str, options: CallOptions) -> tuple[float, dict[str, Any]]:
    """The timeout, and the keywords of httpx's `request`, for a `call`."""
    headers = dict(options.get("headers") or {})
    method = options.get("method", "POST")
    return options.get("timeout", 30.0), {
        "method": method, "url": url, "json": options.get("body"), "headers": headers,
    }  # fmt: skip


class _Base(Generic[P]):
    def __init__(self, ctx: Context | SyncContext) -> None:
        self.ctx = ctx
        data = ctx.event.data
        self.request_payload: P = data.get("payload")  # type: ignore[assignment]
        self.headers: dict[str, str] = dict(data.get("headers") or {})
        self.workflow_run_id = ctx.run_id

    @property
    def event(self) -> Event:
        return self.ctx.event


class WorkflowContext(_Base[P]):
    """The context of an async route workflow."""

    ctx: Context

    async def run(
        self, step_name: str, fn: Callable[..., Awaitable[T]] | Callable[..., T], *args: Any
    ) -> T:
        return await self.ctx.step.run(step_name, fn, *args)

    async def sleep(self, step_name: str, duration: DurationLike) -> None:
        await self.ctx.step.sleep(step_name, duration)

    async def sleep_until(self, step_name: str, until: _dt.datetime) -> None:
        await self.ctx.step.sleep_until(step_name, until)

    async def wait_for_event(
        self, step_name: str, event: str, *, timeout: DurationLike = "7d", if_: str | None = None
    ) -> Event | None:
        return await self.ctx.step.wait_for_event(step_name, event=event, timeout=timeout, if_=if_)

    async def notify(
        self, step_name: str, event: str, data: Mapping[str, Any] | None = None
    ) -> list[str]:
        return await self.ctx.step.send_event(step_name, {"name": event, "data": dict(data or {})})

    async def call(self, step_name: str, url: str, **options: Unpack[CallOptions]) -> CallResponse:
        """A durable HTTP call: retried on connection errors and 5xx answers, then stored."""
        timeout, request = _request(url, options)

        async def go() -> CallResponse:
            try:
                async with httpx.AsyncClient(timeout=timeout) as client:
                    res = await client.request(**request)
            except httpx.HTTPError as err:
                raise _CallFailedError(f"calling {url} failed: {err}") from None
            return _check(_decode(res), url)

        return await self.ctx.step.run(step_name, go, output_type=CallResponse)

    async def fetch(
        self, step_name: str, url: str, *, method: str = "GET",
        headers: dict[str, str] | None = None, body: str | None = None, json: Any = None,
    ) -> FetchResponse:  # fmt: skip
        """`ctx.step.fetch`: the orchestrator makes the request; the workflow holds no worker."""
        return await self.ctx.step.fetch(
            step_name, url, method=method, headers=headers, body=body, json=json
        )

    async def infer(
        self, step_name: str, *, url: str, body: dict[str, Any], auth_key: str | None = None,
        format: str = "openai-chat", headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """`ctx.step.ai.infer`: a model call made by the orchestrator."""
        return await self.ctx.step.ai.infer(
            step_name, url=url, body=body, auth_key=auth_key, format=format, headers=headers
        )


class SyncWorkflowContext(_Base[P]):
    """The context of a sync route workflow: steps return their values directly."""

    ctx: SyncContext

    def run(self, step_name: str, fn: Callable[..., T], *args: Any) -> T:
        return self.ctx.step.run(step_name, fn, *args)

    def sleep(self, step_name: str, duration: DurationLike) -> None:
        self.ctx.step.sleep(step_name, duration)

    def sleep_until(self, step_name: str, until: _dt.datetime) -> None:
        self.ctx.step.sleep_until(step_name, until)

    def wait_for_event(
        self, step_name: str, event: str, *, timeout: DurationLike = "7d", if_: str | None = None
    ) -> Event | None:
        return self.ctx.step.wait_for_event(step_name, event=event, timeout=timeout, if_=if_)

    def notify(
        self, step_name: str, event: str, data: Mapping[str, Any] | None = None
    ) -> list[str]:
        return self.ctx.step.send_event(step_name, {"name": event, "data": dict(data or {})})

    def call(self, step_name: str, url: str, **options: Unpack[CallOptions]) -> CallResponse:
        """A durable HTTP call: retried on connection errors and 5xx answers, then stored."""
        timeout, request = _request(url, options)

        def go() -> CallResponse:
            try:
                with httpx.Client(timeout=timeout) as client:
                    res = client.request(**request)
            except httpx.HTTPError as err:
                raise _CallFailedError(f"calling {url} failed: {err}") from None
            return _check(_decode(res), url)

        return self.ctx.step.run(step_name, go, output_type=CallResponse)

    def fetch(
        self, step_name: str, url: str, *, method: str = "GET",
        headers: dict[str, str] | None = None, body: str | None = None, json: Any = None,
    ) -> FetchResponse:  # fmt: skip
        return self.ctx.step.fetch(
            step_name, url, method=method, headers=headers, body=body, json=json
        )

    def infer(
        self, step_name: str, *, url: str, body: dict[str, Any], auth_key: str | None = None,
        format: str = "openai-chat", headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        return self.ctx.step.ai.infer(
            step_name, url=url, body=body, auth_key=auth_key, format=format, headers=headers
        )


def workflow_id(path: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", path).strip("-").lower()
    if not slug:
        raise NonRetriableError(f"cannot make a workflow id from the path {path!r}; pass id=")
    return f"route-{slug}"


def wrap(handler: Callable[..., Any]) -> Callable[[Any], Any]:
    """The durable function behind a route handler that takes a workflow context."""
    if inspect.iscoroutinefunction(handler):

        async def run_async(ctx: Context) -> Any:
            return await handler(WorkflowContext(ctx))

        return run_async

    def run_sync(ctx: SyncContext) -> Any:
        return handler(SyncWorkflowContext(ctx))

    return run_sync


def start_body(body: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
    """The run's event data for a plain POST: the payload (JSON if it parses) and headers."""
    payload: Any
    try:
        payload = json.loads(body) if body else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        payload = body.decode("utf-8", "replace")
    keep = {k: v for k, v in headers.items() if k.lower() not in ("authorization", "cookie")}
    return {"payload": payload, "headers": keep}


def is_protocol_call(req: Request) -> bool:
    return "fnId" in req.query


_JSON = {"content-type": "application/json"}


def _started(run_id: Any) -> Response:
    return json_response(200, {"workflowRunId": run_id}, _JSON)


def _unavailable(err: DurableError) -> Response:
    return json_response(503, {"error": f"could not start the workflow: {err}"}, _JSON)


async def start_async(durable: Client, fn: Function[Any], req: Request) -> Response:
    """Answer a plain POST to a workflow route: start a run."""
    try:
        run_id = await durable.invoke_async(fn, start_body(req.body, req.headers), wait=False)
    except DurableError as err:
        return _unavailable(err)
    return _started(run_id)


def start_blocking(durable: Client, fn: Function[Any], req: Request) -> Response:
    try:
        run_id = durable.invoke(fn, start_body(req.body, req.headers), wait=False)
    except DurableError as err:
        return _unavailable(err)
    return _started(run_id)
