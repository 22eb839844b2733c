"""A `durable dev`-like orchestrator on uvicorn on loopback, and an app in this process served
over HTTP and synced with it: what the dashboard tests drive."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
from fastapi import FastAPI
from tests.orchestrator.conftest import DEADLINE, UvicornApp

from adapters.fastapi import Serve
from durable_core import Context, Durable, NonRetriableError, TriggerEvent
from durable_core.orchestrator.api import Api
from durable_core.orchestrator.service import Orchestrator
from durable_core.orchestrator.store import open_store
from durable_core.signing import hashed_signing_key

SERVE_PATH = "/api/durable"
KEY = "signkey-prod-" + "5eed" * 16


def shop(orch_url: str, **keys: Any) -> Durable:
    durable = Durable("shop", orchestrator_url=orch_url, **keys)
    charges: dict[str, int] = {}

    @durable.function(id="checkout", name="Checkout", trigger=TriggerEvent("shop/order.created"))
    async def checkout(ctx: Context) -> dict[str, Any]:
        order = ctx.event.data.get("order", "A-1")

        async def charge() -> dict[str, Any]:
            charges[ctx.run_id] = charges.get(ctx.run_id, 0) + 1
            await asyncio.sleep(0.03)
            if charges[ctx.run_id] == 1:  # the card network times out once
                raise TimeoutError("card network did not answer in time")
            return {"charged": 42.5, "currency": "EUR"}

        async def work(result: Any, seconds: float = 0.02) -> Any:
            await asyncio.sleep(seconds)
            return result

        items = await ctx.step.run("validate-order", work, {"order": order, "items": 3})
        await ctx.step.run("reserve-stock", work, {"reserved": items["items"]}, 0.05)
        payment = await ctx.step.run("charge-card", charge)
        await ctx.step.sleep("wait-for-settlement", "150ms")
        await ctx.step.run("send-receipt", work, {"sent_to": "ada@example.com"})
        return {"order": order, **payment}

    @durable.function(id="nap", name="Nightly report", trigger=TriggerEvent("report/requested"))
    async def nap(ctx: Context) -> str:
        await ctx.step.run("collect", lambda: "ok")
        await ctx.step.sleep("until-tomorrow", "1h")
        return "sent"

    @durable.function(id="refund", name="Refund", trigger=TriggerEvent("shop/refund.requested"))
    async def refund(ctx: Context) -> None:
        await ctx.step.run("look-up-charge", lambda: {"charge": "ch_1"})
        raise NonRetriableError("the charge is older than 180 days: refund it by hand")

    return durable


class Stack:
    def __init__(self, orch_url: str, app_url: str, key: str | None) -> None:
        self.url = orch_url
        self.app_url = app_url
        headers = {"authorization": f"Bearer {hashed_signing_key(key)}"} if key else {}
        self.api = httpx.Client(base_url=orch_url, timeout=DEADLINE, headers=headers)

    def send(self, name: str, data: dict[str, Any] | None = None) -> None:
        res = self.api.post("/v1/events", json={"name": name, "data": data or {}})
        assert res.status_code == 200, res.text

    def runs(self, fn: str) -> list[dict[str, Any]]:
        res = self.api.get("/v1/runs", params={"function_id": f"shop-{fn}"})
        assert res.status_code == 200, res.text
        return list(res.json()["data"])


@contextlib.contextmanager
def stack(database_url: str, key: str | None = None) -> Iterator[Stack]:
    orch = Orchestrator(open_store(database_url), backoff=(0.05,), signing_key=key)
    orchestrator = UvicornApp(Api(orch).served())
    orchestrator.start()
    app = FastAPI()
    server = UvicornApp(app)
    keys: dict[str, Any] = (
        {"signing_key": key, "serve_origin": server.base_url} if key else {"dev": True}
    )
    try:
        Serve(app, shop(orchestrator.base_url, **keys), path=SERVE_PATH)
        server.start()
        res = httpx.put(f"{server.base_url}{SERVE_PATH}", timeout=DEADLINE)
        assert res.status_code == 200, res.text
        s = Stack(orchestrator.base_url, server.base_url, key)
        try:
            yield s
        finally:
            s.api.close()
    finally:
        server.stop()
        orchestrator.stop()
