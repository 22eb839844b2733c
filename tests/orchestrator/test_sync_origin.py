"""Who may say where a production app is called: an out-of-band sync (PUT to the serve
endpoint) registers the app's URL with the orchestrator, which then sends that URL the app's
signed execution requests, event data included.

An unsigned request's Host header is whatever its sender says, so in production an unsigned
sync registers only the configured serve origin (`DURABLE_SERVE_ORIGIN`), and without one it is
refused, naming the fix. A signed PUT may still name the URL from its Host. Every test runs a
production orchestrator and a production app under real uvicorn servers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from adapters.fastapi import Serve
from durable_core import Context, Durable, TriggerEvent
from durable_core.orchestrator.api import Api
from durable_core.orchestrator.service import Orchestrator
from durable_core.orchestrator.store import open_store
from durable_core.signing import hashed_signing_key, sign

from .conftest import DEADLINE, UvicornApp, sqlite_only

pytestmark = sqlite_only  # what is checked happens before the store is touched

KEY = "9e" * 32
BEARER = {"authorization": f"Bearer {hashed_signing_key(KEY)}"}
ATTACKER = "attacker.example:8443"


@contextlib.contextmanager
def running(app: Any) -> Iterator[UvicornApp]:
    server = UvicornApp(app)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def orchestrator(database_url: str) -> Iterator[httpx.Client]:
    orch = Orchestrator(open_store(database_url), signing_key=KEY, event_keys=["k"])

    with (
        running(Api(orch).served()) as server,
        httpx.Client(base_url=server.base_url, timeout=DEADLINE) as client,
    ):
        yield client


def production_app(orchestrator_url: str, serve_origin: str | None = None) -> FastAPI:
    d = Durable("shop", signing_key=KEY, orchestrator_url=orchestrator_url)
    d.serve_origin = serve_origin

    @d.function(id="charge", trigger=TriggerEvent("shop/charge"))
    async def charge(ctx: Context) -> str:
        return "charged"

    web = FastAPI()
    Serve(web, d, embedded=False)
    return web


def registered(orchestrator: httpx.Client) -> dict[str, str]:
    res = orchestrator.get("/v1/apps", headers=BEARER)
    assert res.status_code == 200, res.text
    return {a["app_id"]: a["url"] for a in res.json()["data"]}


def test_an_unsigned_sync_without_a_serve_origin_is_refused_naming_the_fix(
    orchestrator: httpx.Client,
) -> None:
    with running(production_app(str(orchestrator.base_url))) as app:
        for headers in ({"host": ATTACKER}, {}):
            res = httpx.put(app.base_url + "/api/durable", headers=headers, timeout=DEADLINE)
            assert res.status_code == 401, res.text
            body = res.json()
            assert body["status"] == 401 and "DURABLE_SERVE_ORIGIN" in body["error"], body
            assert res.headers["x-inngest-sync-kind"] == "out_of_band"
    assert registered(orchestrator) == {}


def test_an_unsigned_sync_registers_the_serve_origin_whatever_the_host(
    orchestrator: httpx.Client,
) -> None:
    origin = "http://shop.internal:8000"
    with running(production_app(str(orchestrator.base_url), origin)) as app:
        res = httpx.put(app.base_url + "/api/durable", headers={"host": ATTACKER}, timeout=10)
        assert res.status_code == 200, res.text
    assert registered(orchestrator) == {"shop": f"{origin}/api/durable"}
    functions = orchestrator.get("/v1/functions", headers=BEARER).json()["data"]
    urls = [f["config"]["steps"]["step"]["runtime"]["url"] for f in functions]
    assert urls and all(u.startswith(f"{origin}/api/durable?") for u in urls), urls


def test_a_signed_sync_may_name_the_url_from_its_host(orchestrator: httpx.Client) -> None:
    with running(production_app(str(orchestrator.base_url))) as app:
        url = app.base_url + "/api/durable"
        forged = {"x-inngest-signature": sign(b"", "77" * 32)}
        assert httpx.put(url, headers=forged, timeout=DEADLINE).status_code == 401
        assert registered(orchestrator) == {}

        res = httpx.put(url, headers={"x-inngest-signature": sign(b"", KEY)}, timeout=DEADLINE)
        assert res.status_code == 200, res.text
        assert "x-inngest-signature" in res.headers  # a signed request gets a signed answer
    assert registered(orchestrator) == {"shop": url}


def test_the_orchestrator_never_lets_an_unauthenticated_caller_register(
    orchestrator: httpx.Client,
) -> None:
    body = {
        "appname": "shop",
        "url": f"http://{ATTACKER}/api/durable",
        "functions": [
            {
                "id": "shop-charge",
                "triggers": [{"event": "shop/charge"}],
                "steps": {"step": {"runtime": {"url": f"http://{ATTACKER}/api/durable"}}},
            }
        ],
    }
    for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": KEY}):
        res = orchestrator.post("/fn/register", json=body, headers=headers)
        assert res.status_code == 401, res.text
    assert registered(orchestrator) == {}


def test_in_dev_mode_a_sync_still_names_the_url_from_the_request() -> None:
    seen: list[Any] = []

    async def register(request: Request) -> JSONResponse:
        seen.append(await request.json())
        return JSONResponse({"ok": True, "modified": True})

    fake = Starlette(routes=[Route("/fn/register", register, methods=["POST"])])
    with running(fake) as orch:
        d = Durable("devshop", dev=True, orchestrator_url=orch.base_url)

        @d.function(id="f", trigger=TriggerEvent("dev/f"))
        async def f(ctx: Context) -> None:
            return None

        web = FastAPI()
        Serve(web, d, embedded=False)
        with running(web) as app:
            res = httpx.put(app.base_url + "/api/durable", timeout=DEADLINE)
            assert res.status_code == 200, res.text
    assert [body["url"] for body in seen] == [app.base_url + "/api/durable"]
