"""Errors no retry can fix fail the run at once, with the message, instead of sitting in
`running` through the backoff (15 s, 30 s, 1 m, ...)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from durable_core import Context, Durable, SyncContext, TriggerEvent

from .conftest import StartFactory, UvicornApp, wait_until

SERVER = {"async": "testclient", "sync": "uvicorn"}
modes = pytest.mark.parametrize(
    ("database_url", "mode"),
    [("sqlite", "async"), ("postgres", "async"), ("sqlite", "sync")],
    indirect=["database_url"],
)


@modes
def test_a_sleep_with_an_invalid_duration_fails_the_run_at_once(
    mode: str, embedded: StartFactory
) -> None:
    d = Durable("t", dev=True)
    calls: list[int] = []
    if mode == "async":

        @d.function(id="f", trigger=TriggerEvent("t/go"), retries=3)
        async def f(ctx: Context) -> str:
            calls.append(1)
            await ctx.step.run("first", lambda: 1)
            await ctx.step.sleep("nap", "30 seconds")
            return "woke"
    else:

        @d.function(id="f", trigger=TriggerEvent("t/go"), retries=3)
        def f(ctx: SyncContext) -> str:
            calls.append(1)
            ctx.step.run("first", lambda: 1)
            ctx.step.sleep("nap", "30 seconds")
            return "woke"

    h = embedded(d, server=SERVER[mode])
    h.send("t/go")
    run = h.only_run("f")
    assert run["status"] == "failed", run
    assert run["error"]["name"] == "InvalidStepError", run["error"]
    assert "'nap'" in run["error"]["message"]
    assert "'30 seconds'" in run["error"]["message"]
    assert len(calls) == 1, "the request was retried"


@modes
def test_a_wait_with_an_invalid_condition_fails_the_run_at_once(
    mode: str, embedded: StartFactory
) -> None:
    d = Durable("t", dev=True)
    condition = "event.data.id === async.data.id"
    if mode == "async":

        @d.function(id="f", trigger=TriggerEvent("t/go"))
        async def f(ctx: Context) -> Any:
            try:
                await ctx.step.wait_for_event("paid", event="t/paid", timeout="1h", if_=condition)
            except Exception:  # the function cannot swallow it: the run fails regardless
                return "swallowed"
            return "paid"
    else:

        @d.function(id="f", trigger=TriggerEvent("t/go"))
        def f(ctx: SyncContext) -> Any:
            try:
                ctx.step.wait_for_event("paid", event="t/paid", timeout="1h", if_=condition)
            except Exception:
                return "swallowed"
            return "paid"

    h = embedded(d, server=SERVER[mode])
    h.send("t/go", {"id": 1})
    run = h.only_run("f")
    assert run["status"] == "failed", run
    assert run["error"]["name"] == "InvalidStepError", run["error"]
    assert "'paid'" in run["error"]["message"]
    assert condition in run["error"]["message"]


# -- ops from another SDK -----------------------------------------------------------------------

OPS = {
    "Sleep": {"opts": {"duration": "30 seconds"}, "name": "nap"},
    "WaitForEvent": {"opts": {"event": "t/paid", "timeout": "one hour"}, "name": "t/paid"},
    "WaitForSignal": {"opts": {"signal": "go", "timeout": "1 hour"}, "name": "step"},
    "InvokeFunction": {"opts": {"function_id": "other-f", "timeout": "soon"}, "name": "step"},
}


def _other_sdk(kind: str) -> Starlette:
    """An app in another SDK: its function's first op carries an invalid duration; it then
    returns the memo it got for that step."""
    step = hashlib.sha1(b"step").hexdigest()

    async def serve(request: Request) -> JSONResponse:
        body = await request.json()
        if step in (body.get("steps") or {}):
            return JSONResponse({"memo": body["steps"][step]})
        op = {"op": kind, "id": step, "displayName": "step", **OPS[kind]}
        return JSONResponse([op], status_code=206)

    return Starlette(routes=[Route("/api/inngest", serve, methods=["POST"])])


@pytest.mark.parametrize("kind", list(OPS))
def test_an_op_with_an_invalid_duration_answers_its_step_with_an_error(
    kind: str, embedded: StartFactory
) -> None:
    """Before, the answer could not be applied, and the request was sent again and again."""
    other = UvicornApp(_other_sdk(kind))
    other.start()
    try:
        h = embedded(Durable("t", dev=True))
        url = f"{other.base_url}/api/inngest?fnId=other-f&stepId=step"
        fn = {
            "id": "other-f",
            "triggers": [{"event": "other/go"}],
            "steps": {"step": {"id": "step", "runtime": {"type": "http", "url": url}}},
        }
        body = {"appname": "other", "url": url, "functions": [fn]}
        assert h.post("/fn/register", body).status_code == 200
        h.send("other/go")
        runs = wait_until("a run", lambda: h.get("/v1/runs", function_id="other-f").json()["data"])
        run = h.finish(runs[0]["run_id"])
        assert run["status"] == "completed", run
        error = run["output"]["memo"]["error"]
        assert error["name"] == "InvalidResponse", error
        value = next(v for k, v in OPS[kind]["opts"].items() if k in ("duration", "timeout"))
        assert "'step'" in error["message"] and repr(value) in error["message"], error
    finally:
        other.stop()
