"""Starlette: `Serve(app, durable)` mounts the endpoint at /api/durable."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response as StarletteResponse

from durable_core import Durable, Request, ServeHandler
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
    """Serve `durable`'s functions from a Starlette (or FastAPI) app at `path`."""

    framework = "starlette"

    def __init__(self, app: Starlette, durable: Durable, *, path: str = DEFAULT_SERVE_PATH) -> None:
        self.app = app
        self.durable = durable
        self.path = path
        self.handler = ServeHandler(durable, framework=self.framework, serve_path=path)
        self._mount()

    def _mount(self) -> None:
        self.app.add_route(self.path, self.endpoint, methods=["GET", "PUT", "POST"])

    async def endpoint(self, request: StarletteRequest) -> StarletteResponse:
        res = await self.handler.handle(await to_core(request))
        return StarletteResponse(res.body, status_code=res.status, headers=res.headers)
