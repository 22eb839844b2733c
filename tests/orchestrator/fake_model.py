"""An OpenAI-compatible fake model server on loopback, and a few plain HTTP routes, for the
tests of `step.ai.infer` and `step.fetch`.

`POST /v1/chat/completions` answers like OpenAI's chat completions API: the content is
`"echo: <last user message>"`. It checks `Authorization: Bearer <key>` (401 otherwise), and
fails with the statuses queued in `fail` first (one per request). Every request is recorded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .conftest import UvicornApp

API_KEY = "sk-test-123"


@dataclasses.dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class FakeModel:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.fail: list[int] = []  # statuses to answer first, one per request
        self.retry_after: str | None = None  # sent with a queued 429
        self.big = 0  # bytes of padding in each completion
        self.hold: threading.Event | None = None  # completions wait until it is set
        self._lock = threading.Lock()
        self.server = UvicornApp(
            Starlette(
                routes=[
                    Route("/v1/chat/completions", self._complete, methods=["POST"]),
                    Route("/page", self._page, methods=["GET"]),
                    Route("/echo", self._echo, methods=["GET", "POST", "PUT", "DELETE"]),
                    Route("/missing", self._missing, methods=["GET"]),
                    Route("/empty", self._empty, methods=["DELETE"]),
                ]
            )
        )

    @property
    def url(self) -> str:
        return self.server.base_url

    def start(self) -> FakeModel:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def calls(self, path: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    async def _record(self, request: Request) -> tuple[Recorded, int | None]:
        rec = Recorded(
            request.method, request.url.path, dict(request.headers), await request.body()
        )
        with self._lock:
            self.requests.append(rec)
            failure = self.fail.pop(0) if self.fail else None
        return rec, failure

    def _failure(self, status: int) -> Response:
        headers = {"retry-after": self.retry_after} if status == 429 and self.retry_after else {}
        error = {"error": {"message": f"failing with {status}", "type": "server_error"}}
        return JSONResponse(error, status_code=status, headers=headers)

    async def _complete(self, request: Request) -> Response:
        rec, failure = await self._record(request)
        if failure is not None:
            return self._failure(failure)
        if self.hold is not None:
            await asyncio.to_thread(self.hold.wait, 30)
        if rec.headers.get("authorization") != f"Bearer {API_KEY}":
            error = {"message": "Incorrect API key provided", "type": "invalid_request_error"}
            return JSONResponse({"error": error}, status_code=401)
        body = rec.json()
        if not isinstance(body.get("messages"), list) or not body.get("model"):
            error = {"message": "model and messages are required", "type": "invalid_request_error"}
            return JSONResponse({"error": error}, status_code=400)
        last = body["messages"][-1]["content"]
        return JSONResponse(
            {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"echo: {last}"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
                "padding": "x" * self.big,
            }
        )

    async def _page(self, request: Request) -> Response:
        _, failure = await self._record(request)
        if failure is not None:
            return self._failure(failure)
        return PlainTextResponse("a page", headers={"x-page": "1"})

    async def _echo(self, request: Request) -> Response:
        rec, failure = await self._record(request)
        if failure is not None:
            return self._failure(failure)
        seen = {
            "method": rec.method,
            "body": rec.body.decode(),
            "type": rec.headers.get("content-type"),
        }
        return JSONResponse(seen, status_code=201 if rec.method == "POST" else 200)

    async def _missing(self, request: Request) -> Response:
        await self._record(request)
        return PlainTextResponse("no such page", status_code=404)

    async def _empty(self, request: Request) -> Response:
        await self._record(request)
        return Response(status_code=204)
