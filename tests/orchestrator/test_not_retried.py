"""Errors no retry can fix fail the run at once, with the message, instead of sitting in
`running` through the backoff (15 s, 30 s, 1 m, ...)."""

from __future__ import annotations

from typing import Any

import pytest

from durable_core import Context, Durable, SyncContext, TriggerEvent

from .conftest import StartFactory

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
