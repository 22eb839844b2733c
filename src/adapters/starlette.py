"""Starlette: `Serve(app, durable)` mounts the endpoint at /api/durable.

With no orchestrator URL configured, the orchestrator runs embedded in the app's process: it
starts and stops with the app's lifespan and its API is mounted at /durable.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response as StarletteResponse

from durable_core import Durable, Function, Request, Response, ServeHandler
from durable_core._bounded_json import MAX_BODY
from durable_core.orchestrator.embedded import API_PATH, Embedded
from durable_core.routes import is_protocol_call, start_async
from durable_core.serve import DEFAULT_SERVE_PATH


async def to_core(request: StarletteRequest, limit: int | None = None) -> Request:
    """The request for the serve handler; with `limit`, the body is read only up to one byte
    past it (the handler refuses it with 413), so a huge body never sits in memory."""
    if limit is None:
        body = await request.body()
    else:
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                break
        body = b"".join(chunks)[: limit + 1]
    return Request(
        method=request.method,
        body=body,
        headers=dict(request.headers),
        query=dict(request.query_params),
        url=str(request.url),
    )


class Serve:
    """Serve `durable`'s functions from a Starlette (or FastAPI) app at `path`.

    `embedded`: run the orchestrator in this process (default: when no orchestrator URL is set).
    """

    framework = "starlette"

    def __init__(
        self,
        app: Starlette,
        durable: Durable | None = None,
        *,
        path: str = DEFAULT_SERVE_PATH,
        embedded: bool | None = None,
        api_path: str = API_PATH,
    ) -> None:
        self.app = app
        self.durable = durable = durable or Durable(os.environ.get("DURABLE_APP_ID", "app"))
        self.path = path
        if embedded is None:
            embedded = not durable.orchestrator_url_configured
        self.embedded = Embedded(durable) if embedded else None
        self.handler = ServeHandler(durable, framework=self.framework, serve_path=path)
        self._mount()
        if self.embedded is not None:
            app.mount(api_path, self.embedded)
            self._wrap_lifespan()

    def _mount(self) -> None:
        self.app.add_route(self.path, self.endpoint, methods=["GET", "PUT", "POST"])

    def _wrap_lifespan(self) -> None:
        router: Any = self.app.router
        inner = router.lifespan_context
        embedded = self.embedded
        assert embedded is not None

        @contextlib.asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[Any]:
            await embedded.start_or_forward()
            try:
                async with inner(app) as state:
                    yield state
            finally:
                await embedded.stop()

        router.lifespan_context = lifespan

    def _route(
        self, path: str, endpoint: Callable[[StarletteRequest], Awaitable[StarletteResponse]]
    ) -> None:
        self.app.add_route(path, endpoint, methods=["POST"])

    async def endpoint(self, request: StarletteRequest) -> StarletteResponse:
        return to_response(await self.handler.handle(await to_core(request, MAX_BODY)))

    def post(
        self, path: str, *, id: str | None = None, retries: int = 4, on_failure: Any = None
    ) -> Callable[[Callable[..., Any]], Function[Any]]:
        """Make the route at `path` a workflow: a plain POST starts a run and answers
        `{"workflowRunId": ...}`; the orchestrator calls the same route for each step."""
        workflow = self.durable.workflow(path, id=id, retries=retries, on_failure=on_failure)

        def decorate(handler: Callable[..., Any]) -> Function[Any]:
            fn = workflow(handler)

            async def endpoint(request: StarletteRequest) -> StarletteResponse:
                req = await to_core(request)
                if is_protocol_call(req):
                    return to_response(await self.handler.handle(req))
                return to_response(await start_async(self.durable, fn, req))

            self._route(path, endpoint)
            return fn

        return decorate


def to_response(res: Response) -> StarletteResponse:
    return StarletteResponse(res.body, status_code=res.status, headers=res.headers)
