"""The app's client calls against an orchestrator that answers like `durable dev` does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from conftest import UvicornServer
from durable_core import Durable, DurableError, FunctionNotFoundError


@pytest.fixture
def orchestrator_url(uvicorn_server: Callable[[Any], UvicornServer]) -> str:
    async def invoke(request: Request) -> JSONResponse:
        fn_id = request.path_params["function_id"]
        return JSONResponse({"error": f"no function {fn_id!r} (registered: none)"}, 404)

    routes = [Route("/v1/functions/{function_id}/invoke", invoke, methods=["POST"])]
    return uvicorn_server(Starlette(routes=routes)).base_url


def test_invoking_an_unknown_function_raises_function_not_found(orchestrator_url: str) -> None:
    d = Durable("shop", dev=True, orchestrator_url=orchestrator_url)
    with pytest.raises(FunctionNotFoundError, match="no function 'shop-nope'") as caught:
        d.invoke("shop-nope", {})
    assert isinstance(caught.value, DurableError)
    assert caught.value.code == "function_not_found"


async def test_invoking_an_unknown_function_raises_function_not_found_async(
    orchestrator_url: str,
) -> None:
    d = Durable("shop", dev=True, orchestrator_url=orchestrator_url)
    with pytest.raises(FunctionNotFoundError, match="HTTP 404"):
        await d.invoke_async("nope", wait=False)
