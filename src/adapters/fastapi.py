"""FastAPI: `Serve(app, durable)` mounts the endpoint at /api/durable."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from . import starlette as _starlette


class Serve(_starlette.Serve):
    """Serve `durable`'s functions from a FastAPI app at `path` (kept out of the OpenAPI schema)."""

    framework = "fast_api"
    app: FastAPI

    def _mount(self) -> None:
        self.app.add_api_route(
            self.path, self.endpoint, methods=["GET", "PUT", "POST"], include_in_schema=False
        )

    def _route(self, path: str, endpoint: Callable[[Request], Awaitable[Response]]) -> None:
        self.app.add_api_route(path, endpoint, methods=["POST"])
