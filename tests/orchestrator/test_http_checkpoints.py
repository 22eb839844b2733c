"""Checkpoints over HTTP: a standalone orchestrator (its API under uvicorn on loopback) calls
our SDK's app (under uvicorn too); the app posts each finished step to
`POST /v1/checkpoint/{run_id}/async`, so a chain of steps runs in one execution request.

Also the checkpoint API on its own: a stale request (its queue item answered, or of another
run, or its run over) gets 409, a step checkpointed twice is stored once, a production
orchestrator wants its key (401, before the body is read), bad bodies get a 400 naming the
field, and steps over the run's limits a 413 that leaves the run as it was. On both stores."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from adapters.fastapi import Serve
from durable_core import Context, Durable, Limits, SyncContext, TriggerEvent
from durable_core.orchestrator.api import Api
from durable_core.orchestrator.service import Orchestrator
from durable_core.orchestrator.store import open_store
from durable_core.signing import hashed_signing_key

from .conftest import DEADLINE, FINISHED, UvicornApp, wait_until

SERVE_PATH = "/api/durable"
KEY = "signkey-prod-0123456789abcdef0123456789abcdef"
N = 12


class Counted:
    """An ASGI app that counts the execution requests reaching the serve endpoint."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.executions = 0
        self.lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == SERVE_PATH:
            with self.lock:
                self.executions += 1
        await self.app(scope, receive, send)


@contextlib.contextmanager
def standalone(database_url: str, **options: Any) -> Iterator[tuple[str, Orchestrator]]:
    """A standalone orchestrator's API under uvicorn: its base URL."""
    orch = Orchestrator(open_store(database_url), backoff=(0.05,), **options)
    server = UvicornApp(Api(orch).served())
    server.start()
    try:
        yield server.base_url, orch
    finally:
        server.stop()


def chain_app(orch_url: str, **keys: Any) -> tuple[Durable, Counted]:
    durable = Durable("chain", orchestrator_url=orch_url, **keys)

    def add(total: int, i: int) -> int:
        return total + i

    async def add_async(total: int, i: int) -> int:
        return total + i

    @durable.function(id="async-chain", trigger=TriggerEvent("chain/async"))
    async def async_chain(ctx: Context) -> int:
        total = 0
        for i in range(N):
            total = await ctx.step.run(f"s{i}", add_async, total, i)
        return total

    @durable.function(id="sync-chain", trigger=TriggerEvent("chain/sync"))
    def sync_chain(ctx: SyncContext) -> int:
        total = 0
        for i in range(N):
            total = ctx.step.run(f"s{i}", add, total, i)
        return total

    @durable.function(id="one", trigger=TriggerEvent("chain/one"))
    async def one(ctx: Context) -> str:
        return await ctx.step.run("only", lambda: "done")

    @durable.function(id="napping", trigger=TriggerEvent("chain/nap"))
    async def napping(ctx: Context) -> list[int]:
        a = await ctx.step.run("a", lambda: 1)
        b = await ctx.step.run("b", lambda: 2)
        await ctx.step.sleep("nap", "50ms")
        c = await ctx.step.run("c", lambda: 3)
        return [a, b, c]

    @durable.function(
        id="limited", trigger=TriggerEvent("chain/limited"), limits=Limits(step_output=64)
    )
    async def limited(ctx: Context) -> str:
        await ctx.step.run("small", lambda: "x")
        return await ctx.step.run("big", lambda: "y" * 200)

    app = FastAPI()
    Serve(app, durable, path=SERVE_PATH)
    return durable, Counted(app)


@contextlib.contextmanager
def served_app(orch_url: str, **keys: Any) -> Iterator[tuple[httpx.Client, Counted]]:
    """Our app under uvicorn, synced with the orchestrator at `orch_url`; a client for it."""
    _, counted = chain_app(orch_url, **keys)
    server = UvicornApp(counted)
    server.start()
    headers = {"authorization": f"Bearer {hashed_signing_key(KEY)}"} if "signing_key" in keys else {}
    try:
        with httpx.Client(base_url=orch_url, timeout=DEADLINE, headers=headers) as api:
            origin = {"serve_origin": server.base_url} if "signing_key" in keys else {}
            assert not origin or True
            res = httpx.put(f"{server.base_url}{SERVE_PATH}", timeout=DEADLINE)
            assert res.status_code == 200, res.text
            yield api, counted
    finally:
        server.stop()


def send(api: httpx.Client, name: str) -> None:
    res = api.post("/e/key", json={"name": name, "data": {}})
    assert res.status_code == 200, res.text


def finished(api: httpx.Client, fn_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        runs = api.get("/v1/runs", params={"function_id": fn_id}).json()["data"]
        if runs and runs[0]["status"] in FINISHED:
            return dict(api.get(f"/v1/runs/{runs[0]['run_id']}").json())
        return None

    return dict(wait_until(f"a run of {fn_id} to finish", done))


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_chain_of_steps_runs_in_one_request(database_url: str, kind: str) -> None:
    with standalone(database_url) as (url, _), served_app(url, dev=True) as (api, app):
        before = app.executions
        send(api, f"chain/{kind}")
        run = finished(api, f"chain-{kind}-chain")
        assert run["status"] == "completed", run
        assert run["output"] == sum(range(N))
        assert app.executions - before == 1
        ran = [s["name"] for s in run["steps"] if s["op"] == "StepRun"]
        assert ran == [f"s{i}" for i in range(N)]  # each step stored once, in order


def test_a_one_step_run_is_one_request(database_url: str) -> None:
    with standalone(database_url) as (url, _), served_app(url, dev=True) as (api, app):
        send(api, "chain/one")
        run = finished(api, "chain-one")
        assert (run["status"], run["output"], app.executions) == ("completed", "done", 1)
        assert [s["name"] for s in run["steps"]] == ["only"]


def test_a_sleep_ends_the_request_and_the_run_goes_on(database_url: str) -> None:
    with standalone(database_url) as (url, _), served_app(url, dev=True) as (api, app):
        send(api, "chain/nap")
        run = finished(api, "chain-napping")
        assert (run["status"], run["output"]) == ("completed", [1, 2, 3])
        assert app.executions == 2  # a, b and the sleep; then c and the output
        ran = [s["name"] for s in run["steps"] if s["op"] == "StepRun"]
        assert ran == ["a", "b", "c"]


def test_a_step_over_the_limit_fails_the_run_with_the_earlier_steps_stored(
    database_url: str,
) -> None:
    with standalone(database_url) as (url, _), served_app(url, dev=True) as (api, _app):
        send(api, "chain/limited")
        run = finished(api, "chain-limited")
        assert run["status"] == "failed"
        assert "64" in run["error"]["message"] or "limit" in run["error"]["message"].lower()
