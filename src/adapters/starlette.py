"""Starlette: `Serve(app, durable)` mounts the endpoint at /api/durable.

With no orchestrator URL configured, the orchestrator runs embedded in the app's process: it
starts and stops with the app's lifespan and its API is mounted at /durable.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response as StarletteResponse

from durable_core import Durable, Request, ServeHandler
from durable_core.orchestrator.embedded import API_PATH, Embedded
from durable_core.serve import DEFAULT_SERVE_PATH


async def to_core(request: StarletteRequest) -> Request:
    return Request(
        method=request.method,
        body=await request.body(),
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
        durable: Durable,
        *,
        path: str = DEFAULT_SERVE_PATH,
        embedded: bool | None = None,
        api_path: str = API_PATH,
    ) -> None:
        self.app = app
        self.durable = durable
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
            await embedded.start()
            try:
                async with inner(app) as state:
                    yield state
            finally:
                await embedded.stop()

        router.lifespan_context = lifespan

    async def endpoint(self, request: StarletteRequest) -> StarletteResponse:
        res = await self.handler.handle(await to_core(request))
        return StarletteResponse(res.body, status_code=res.status, headers=res.headers)
