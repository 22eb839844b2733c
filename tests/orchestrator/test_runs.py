"""Runs as a user sees them: an app with the embedded orchestrator, events sent to it, and the
runs' status, steps and outputs read back from its /durable API.

Most behaviours are checked for an async function and its sync twin; the sync twins run under
a real uvicorn server, where the worker threads and the event loop are the real ones.

Every test runs on both stores (SQLite and PostgreSQL), except the sync twins: the orchestrator
does the same store work for both, so they run on SQLite only, which keeps the suite fast.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import pydantic
import pytest
from fastapi import FastAPI

from durable_core import (
    Context,
    Durable,
    DurableError,
    NonRetriableError,
    RetryAfterError,
    RunFailedError,
    StepError,
    SyncContext,
    TriggerEvent,
)

from .conftest import Harness, StartFactory

SERVER = {"async": "testclient", "sync": "uvicorn"}
modes = pytest.mark.parametrize(
    ("database_url", "mode"),
    [("sqlite", "async"), ("postgres", "async"), ("sqlite", "sync")],
    indirect=["database_url"],
)


def app() -> Durable:
    return Durable("t", dev=True)


def ms(iso: str) -> int:
    return int(dt.datetime.fromisoformat(iso).timestamp() * 1000)


def ops(run: dict[str, Any], name: str | None = None) -> list[tuple[str, str, int]]:
    return [
        (s["name"], s["op"], s["attempt"])
        for s in run["steps"]
        if name is None or s["name"] == name
    ]


def step(run: dict[str, Any], name: str) -> dict[str, Any]:
    found = [s for s in run["steps"] if s["name"] == name]
    assert len(found) == 1, run["steps"]
    return found[0]


# -- steps ------------------------------------------------------------------------------------


@modes
def test_sequential_steps_complete_with_output(mode: str, embedded: StartFactory) -> None:
    d = app()
    if mode == "async":

        @d.function(id="f", trigger=TriggerEvent("t/go"))
        async def f(ctx: Context) -> dict[str, int]:
            a = await ctx.step.run("a", lambda: ctx.event.data["n"] + 1)
            b = await ctx.step.run("b", lambda: a * 10)
            return {"a": a, "b": b}
    else:

        @d.function(id="f", trigger=TriggerEvent("t/go"))
        def f(ctx: SyncContext) -> dict[str, int]:
            a = ctx.step.run("a", lambda: ctx.event.data["n"] + 1)
            b = ctx.step.run("b", lambda: a * 10)
            return {"a": a, "b": b}

    h = embedded(d, server=SERVER[mode])
    h.send("t/go", {"n": 1})
    run = h.only_run("f")
    assert run["status"] == "completed", run
    assert run["output"] == {"a": 2, "b": 20}
    assert run["event"]["data"] == {"n": 1}
    assert [(s["name"], s["op"], s["output"]) for s in run["steps"]] == [
        ("a", "StepRun", 2),
        ("b", "StepRun", 20),
    ]
    assert run["started_at"] is not None and run["ended_at"] is not None


@modes
def test_reused_step_ids_each_run_once(mode: str, embedded: StartFactory) -> None:
    d = app()
    if mode == "async":

        @d.function(id="f", trigger=TriggerEvent("t/go"))
        async def f(ctx: Context) -> list[int]:
            return [await ctx.step.run("x", lambda i=i: i * 2) for i in range(3)]
    else:

        @d.function(id="f", trigger=TriggerEvent("t/go"))
        def f(ctx: SyncContext) -> list[int]:
            return [ctx.step.run("x", lambda i=i: i * 2) for i in range(3)]

    h = embedded(d, server=SERVER[mode])
    h.send("t/go")
    run = h.only_run("f")
    assert run["status"] == "completed", run
    assert run["output"] == [0, 2, 4]
    assert [s["output"] for s in run["steps"]] == [0, 2, 4]
    assert len({s["id"] for s in run["steps"]}) == 3


def test_asyncio_gather_runs_steps_in_parallel(embedded: StartFactory) -> None:
    d = app()

    @d.function(id="f", trigger=TriggerEvent("t/go"))
    async def f(ctx: Context) -> dict[str, Any]:
        a, b = await asyncio.gather(ctx.step.run("a", lambda: "A"), ctx.step.run("b", lambda: "B"))
        same = await asyncio.gather(*(ctx.step.run("p", lambda i=i: i) for i in range(3)))
        joined = await ctx.step.run("join", lambda: a + b + "".join(map(str, same)))
        return {"pair": [a, b], "same": list(same), "joined": joined}

    h = embedded(d)
    h.send("t/go")
    run = h.only_run("f")
    assert run["status"] == "completed", run
    assert run["output"] == {"pair": ["A", "B"], "same": [0, 1, 2], "joined": "AB012"}
    ran = [(s["name"], s["output"]) for s in run["steps"] if s["op"] == "StepRun"]
    assert sorted(ran, key=str) == sorted(
        [("a", "A"), ("b", "B"), ("p", 0), ("p", 1), ("p", 2), ("join", "AB012")], key=str
    )


@modes
def test_step_parallel_runs_steps_in_parallel(mode: str, embedded: StartFactory) -> None:
    d = app()
    if mode == "async":

        @d.function(id="f", trigger=TriggerEvent("t/go"))
        async def f(ctx: Context) -> list[Any]:
            x, y = await ctx.step.parallel(
                lambda: ctx.step.run("x", lambda: 1), lambda: ctx.step.run("y", lambda: 2)
            )
            return [x, y, await ctx.step.run("sum", lambda: x + y)]
    else:

        @d.function(id="f", trigger=TriggerEvent("t/go"))
        def f(ctx: SyncContext) -> list[Any]:
            x, y = ctx.step.parallel(
                lambda: ctx.step.run("x", lambda: 1), lambda: ctx.step.run("y", lambda: 2)
            )
            return [x, y, ctx.step.run("sum", lambda: x + y)]

    h = embedded(d, server=SERVER[mode])
    h.send("t/go")
    run = h.only_run("f")
    assert run["status"] == "completed", run
    assert run["output"] == [1, 2, 3]
    assert sorted(ops(run)) == [("sum", "StepRun", 0), ("x", "StepRun", 0), ("y", "StepRun", 0)]


@modes
def test_step_duration_is_the_time_the_step_took(mode: str, embedded: StartFactory) -> None:
    d = app()

    def slow() -> str:
        time.sleep(0.1)
        return "done"

    if mode == "async":

        @d.function(id="f", trigger=TriggerEvent("t/go"))
        async def f(ctx: Context) -> str:
            return await ctx.step.run("slow", slow)
    else:

        @d.function(id="f", trigger=TriggerEvent("t/go"))
        def f(ctx: SyncContext) -> str:
            return ctx.step.run("slow", slow)

    h = embedded(d, server=SERVER[mode])
    h.send("t/go")
    run = h.only_run("f")
    assert run["status"] == "completed", run
    taken = step(run, "slow")
    assert taken["duration_ms"] >= 100, taken


# -- sleeps -----------------------------------------------------------------------------------


@modes
def test_sleep_wakes_and_the_run_completes(mode: str, embedded: StartFactory) -> None:
    d = app()
    if mode == "async":

        @d.function(id="f", trigger=TriggerEvent("t/go"))
        async def f(ctx: Context) -> float:
            t0 = await ctx.step.run("before", time.time)
            await ctx.step.sleep("nap", "200ms")
            t1 = await ctx.step.run("after", time.time)
            return t1 - t0
    else:

        @d.function(id="f", trigger=TriggerEvent("t/go"))
        def f(ctx: SyncContext) -> float:
            t0 = ctx.step.run("before", time.time)
            ctx.step.sleep("nap", "200ms")
            t1 = ctx.step.run("after", time.time)
            return t1 - t0

    h = embedded(d, server=SERVER[mode])
    h.send("t/go")
    run = h.only_run("f")
    assert run["status"] == "completed", run
    assert [(s["name"], s["op"]) for s in run["steps"]] == [
        ("before", "StepRun"),
        ("nap", "Sleep"),
        ("after", "StepRun"),
    ]
    nap, before = step(run, "nap"), step(run, "before")
    assert nap["ended_at"] is not None
    # The sleep was declared after `before` ended; it must not resolve before its wake time.
    assert ms(nap["ended_at"]) - ms(before["ended_at"]) >= 199, (before, nap)
    assert run["output"] >= 0.199


class Order(pydantic.BaseModel):
    id: str
    total: int


def make_order() -> Order:
    return Order(id="o-1", total=42)


@modes
def test_typed_step_output_is_restored_as_its_model_after_a_sleep(
    mode: str, embedded: StartFactory
) -> None:
    d = app()
    if mode == "async":

        @d.function(id="f", trigger=TriggerEvent("t/go"))
        async def f(ctx: Context) -> dict[str, Any]:
            order = await ctx.step.run("make", make_order)
            await ctx.step.sleep("nap", "50ms")
            return {"type": type(order).__name__, "total": order.total}
    else:

        @d.function(id="f", trigger=TriggerEvent("t/go"))
        def f(ctx: SyncContext) -> dict[str, Any]:
            order = ctx.step.run("make", make_order)
            ctx.step.sleep("nap", "50ms")
            return {"type": type(order).__name__, "total": order.total}

    h = embedded(d, server=SERVER[mode])
    h.send("t/go")
    run = h.only_run("f")
    assert run["status"] == "completed", run
    assert run["output"] == {"type": "Order", "total": 42}
    assert step(run, "make")["output"] == {"id": "o-1", "total": 42}


# -- waiting for events -----------------------------------------------------------------------


@modes
def test_wait_for_event_is_fulfilled_by_a_matching_event(mode: str, embedded: StartFactory) -> None:
    d = app()
    cond = "async.data.order == event.data.order"
    if mode == "async":

        @d.function(id="f", trigger=TriggerEvent("t/go"))
        async def f(ctx: Context) -> Any:
            ev = await ctx.step.wait_for_event("wait", event="t/ok", if_=cond, timeout="10s")
            return None if ev is None else ev.data
    else:

        @d.function(id="f", trigger=TriggerEvent("t/go"))
        def f(ctx: SyncContext) -> Any:
            ev = ctx.step.wait_for_event("wait", event="t/ok", if_=cond, timeout="10s")
            return None if ev is None else ev.data

    h = embedded(d, server=SERVER[mode])
    h.send("t/go", {"order": 7})
    run_id = h.wait_runs("f")[0]["run_id"]
    h.wait_status(run_id, "waiting")
    h.send("t/ok", {"order": 8})
    h.send("t/other", {"order": 7})
    assert h.run(run_id)["status"] == "waiting"
    h.send("t/ok", {"order": 7, "approved": True})
    run = h.finish(run_id)
    assert run["status"] == "completed", run
    assert run["output"] == {"order": 7, "approved": True}
    assert ops(run, "wait") == [("wait", "WaitForEvent", 0)]


@modes
def test_wait_for_event_times_out_with_none(mode: str, embedded: StartFactory) -> None:
    d = app()
    if mode == "async":

        @d.function(id="f", trigger=TriggerEvent("t/go"))
        async def f(ctx: Context) -> Any:
            ev = await ctx.step.wait_for_event("wait", event="t/ok", timeout="200ms")
            return {"timed_out": ev is None}
    else:

        @d.function(id="f", trigger=TriggerEvent("t/go"))
        def f(ctx: SyncContext) -> Any:
            ev = ctx.step.wait_for_event("wait", event="t/ok", timeout="200ms")
            return {"timed_out": ev is None}

    h = embedded(d, server=SERVER[mode])
    h.send("t/go")
    run = h.only_run("f")
    assert run["status"] == "completed", run
    assert run["output"] == {"timed_out": True}


def test_event_sent_before_the_wait_started_does_not_fulfil_it(embedded: StartFactory) -> None:
    d = app()

    @d.function(id="f", trigger=TriggerEvent("t/go"))
    async def f(ctx: Context) -> Any:
        await ctx.step.wait_for_signal("gate", signal="gate", timeout="10s")
        ev = await ctx.step.wait_for_event("wait", event="t/ok", timeout="300ms")
        return {"timed_out": ev is None}

    h = embedded(d)
    h.send("t/go")
    run_id = h.wait_runs("f")[0]["run_id"]
    h.wait_status(run_id, "waiting")
    h.send("t/ok", {"early": True})
    assert h.post("/v1/signals", {"signal": "gate"}).status_code == 200
    run = h.finish(run_id)
    assert run["status"] == "completed", run
    assert run["output"] == {"timed_out": True}


def test_wait_whose_condition_does_not_match_is_not_fulfilled(embedded: StartFactory) -> None:
    d = app()

    @d.function(id="f", trigger=TriggerEvent("t/go"))
    async def f(ctx: Context) -> Any:
        ev = await ctx.step.wait_for_event(
            "wait", event="t/ok", if_="async.data.user == event.data.user", timeout="300ms"
        )
        return {"timed_out": ev is None}

    h = embedded(d)
    h.send("t/go", {"user": "ann"})
    run_id = h.wait_runs("f")[0]["run_id"]
    h.wait_status(run_id, "waiting")
    h.send("t/ok", {"user": "bob"})
    h.send("t/ok", {})
    assert h.run(run_id)["status"] == "waiting"
    run = h.finish(run_id)
    assert run["output"] == {"timed_out": True}


# -- signals ----------------------------------------------------------------------------------


@modes
def test_wait_for_signal_is_resolved_through_the_api(mode: str, embedded: StartFactory) -> None:
    d = app()
    if mode == "async":

        @d.function(id="f", trigger=TriggerEvent("t/go"))
        async def f(ctx: Context) -> Any:
            sig = await ctx.step.wait_for_signal("sig", signal="pay-1", timeout="10s")
            return None if sig is None else {"signal": sig.signal, "data": sig.data}
    else:

        @d.function(id="f", trigger=TriggerEvent("t/go"))
        def f(ctx: SyncContext) -> Any:
            sig = ctx.step.wait_for_signal("sig", signal="pay-1", timeout="10s")
            return None if sig is None else {"signal": sig.signal, "data": sig.data}

    h = embedded(d, server=SERVER[mode])
    nobody = h.post("/v1/signals", {"signal": "pay-1", "data": 1})
    assert nobody.status_code == 404
    assert "pay-1" in nobody.json()["error"]
    h.send("t/go")
    run_id = h.wait_runs("f")[0]["run_id"]
    h.wait_status(run_id, "waiting")
    res = h.post("/v1/signals", {"signal": "pay-1", "data": {"paid": True}})
    assert res.status_code == 200, res.text
    assert res.json() == {"run_id": run_id, "data": {"run_id": run_id}}
    run = h.finish(run_id)
    assert run["status"] == "completed", run
    assert run["output"] == {"signal": "pay-1", "data": {"paid": True}}
    assert h.post("/v1/signals", {"signal": "pay-1"}).status_code == 404


def test_wait_for_signal_times_out_with_none(embedded: StartFactory) -> None:
    d = app()

    @d.function(id="f", trigger=TriggerEvent("t/go"))
    async def f(ctx: Context) -> Any:
        sig = await ctx.step.wait_for_signal("sig", signal="never", timeout="200ms")
        return {"timed_out": sig is None}

    h = embedded(d)
    h.send("t/go")
    run = h.only_run("f")
    assert run["status"] == "completed", run
    assert run["output"] == {"timed_out": True}
    assert h.post("/v1/signals", {"signal": "never"}).status_code == 404


# -- invoke and send_event --------------------------------------------------------------------


@modes
def test_invoke_returns_the_invoked_function_output(mode: str, embedded: StartFactory) -> None:
    d = app()

    @d.function(id="child", trigger=TriggerEvent("t/child"))
    async def child(ctx: Context) -> dict[str, int]:
        n = await ctx.step.run("double", lambda: ctx.event.data["n"] * 2)
        return {"n": n}

    if mode == "async":

        @d.function(id="parent", trigger=TriggerEvent("t/go"))
        async def parent(ctx: Context) -> Any:
            return await ctx.step.invoke("call", function=child, data={"n": 21})
    else:

        @d.function(id="parent", trigger=TriggerEvent("t/go"))
        def parent(ctx: SyncContext) -> Any:
            return ctx.step.invoke("call", function=child, data={"n": 21})

    h = embedded(d, server=SERVER[mode])
    h.send("t/go")
    run = h.only_run("parent")
    assert run["status"] == "completed", run
    assert run["output"] == {"n": 42}
    assert ops(run, "call") == [("call", "InvokeFunction", 0)]
    kid = h.only_run("child")
    assert kid["parent_run_id"] == run["run_id"]
    assert kid["event"]["name"] == "inngest/function.invoked"
    assert kid["event"]["data"] == {"n": 21}


@modes
def test_failed_invoked_function_raises_step_error_in_the_parent(
    mode: str, embedded: StartFactory
) -> None:
    d = app()

    @d.function(id="child", trigger=TriggerEvent("t/child"))
    async def child(ctx: Context) -> None:
        raise NonRetriableError("out of stock")

    if mode == "async":

        @d.function(id="parent", trigger=TriggerEvent("t/go"))
        async def parent(ctx: Context) -> Any:
            try:
                await ctx.step.invoke("call", function=child)
            except StepError as err:
                return {"name": err.name, "message": err.message}
            return "no error"
    else:

        @d.function(id="parent", trigger=TriggerEvent("t/go"))
        def parent(ctx: SyncContext) -> Any:
            try:
                ctx.step.invoke("call", function=child)
            except StepError as err:
                return {"name": err.name, "message": err.message}
            return "no error"

    h = embedded(d, server=SERVER[mode])
    h.send("t/go")
    run = h.only_run("parent")
    assert run["status"] == "completed", run
    assert run["output"] == {"name": "NonRetriableError", "message": "out of stock"}
    assert h.only_run("child")["status"] == "failed"


def test_invoke_timeout_raises_step_error(embedded: StartFactory) -> None:
    d = app()

    @d.function(id="child", trigger=TriggerEvent("t/child"))
    async def child(ctx: Context) -> None:
        await ctx.step.wait_for_signal("hold", signal="never", timeout="1h")

    @d.function(id="parent", trigger=TriggerEvent("t/go"))
    async def parent(ctx: Context) -> Any:
        try:
            await ctx.step.invoke("call", function=child, timeout="200ms")
        except StepError as err:
            return {"name": err.name}
        return "no error"

    h = embedded(d)
    h.send("t/go")
    run = h.only_run("parent")
    assert run["status"] == "completed", run
    assert run["output"] == {"name": "InvokeTimeout"}


def test_an_op_answered_at_once_waits_for_the_rest_of_its_batch(embedded: StartFactory) -> None:
    """An invoke of an unknown function is answered at once; fanning in must still wait for
    the sleep found with it, so the sleep is reported (and recorded) once."""
    d = app()

    @d.function(id="batch", trigger=TriggerEvent("t/go"))
    async def batch(ctx: Context) -> Any:
        missing, slept = await asyncio.gather(
            ctx.step.invoke("call", function="no-such-function"),
            ctx.step.sleep("nap", 0.2),
            return_exceptions=True,
        )
        assert isinstance(missing, StepError)
        return {"invoke": missing.name, "slept": slept}

    h = embedded(d)
    h.send("t/go")
    run = h.only_run("batch")
    assert run["status"] == "completed", run
    assert run["output"] == {"invoke": "FunctionNotFound", "slept": None}
    assert ops(run, "nap") == [("nap", "Sleep", 0)]
    assert ops(run, "call") == [("call", "InvokeFunction", 0)]


@modes
def test_send_event_triggers_another_function(mode: str, embedded: StartFactory) -> None:
    d = app()

    @d.function(id="receiver", trigger=TriggerEvent("t/notified"))
    async def receiver(ctx: Context) -> Any:
        return ctx.event.data

    if mode == "async":

        @d.function(id="sender", trigger=TriggerEvent("t/go"))
        async def sender(ctx: Context) -> list[str]:
            return await ctx.step.send_event(
                "notify", {"name": "t/notified", "data": {"from": ctx.run_id}}
            )
    else:

        @d.function(id="sender", trigger=TriggerEvent("t/go"))
        def sender(ctx: SyncContext) -> list[str]:
            return ctx.step.send_event(
                "notify", {"name": "t/notified", "data": {"from": ctx.run_id}}
            )

    h = embedded(d, server=SERVER[mode])
    h.send("t/go")
    sent = h.only_run("sender")
    assert sent["status"] == "completed", sent
    got = h.only_run("receiver")
    assert got["status"] == "completed", got
    assert got["output"] == {"from": sent["run_id"]}
    assert sent["output"] == [e["internal_id"] for e in h.events("t/notified")]


# -- failures and retries ---------------------------------------------------------------------


def _flaky(fails: int, calls: list[int], result: str) -> Any:
    def handler() -> str:
        calls.append(1)
        if len(calls) <= fails:
            raise ValueError(f"boom {len(calls)}")
        return result

    return handler


@modes
def test_step_failing_twice_then_succeeding_completes(mode: str, embedded: StartFactory) -> None:
    d = app()
    calls: list[int] = []
    flaky = _flaky(2, calls, "ok")
    if mode == "async":

        @d.function(id="f", trigger=TriggerEvent("t/go"), retries=3)
        async def f(ctx: Context) -> str:
            return await ctx.step.run("flaky", flaky)
    else:

        @d.function(id="f", trigger=TriggerEvent("t/go"), retries=3)
        def f(ctx: SyncContext) -> str:
            return ctx.step.run("flaky", flaky)

    h = embedded(d, server=SERVER[mode])
    h.send("t/go")
    run = h.only_run("f")
    assert run["status"] == "completed", run
    assert run["output"] == "ok"
    assert len(calls) == 3
    steps = run["steps"]
    assert [(s["op"], s["attempt"]) for s in steps[:2]] == [("StepError", 0), ("StepError", 1)]
    assert [s["error"]["message"] for s in steps[:2]] == ["boom 1", "boom 2"]
    assert steps[2]["op"] == "StepRun" and steps[2]["output"] == "ok"
    assert len(steps) == 3


def test_successful_retry_shows_the_attempt_that_succeeded(embedded: StartFactory) -> None:
    d = app()
    flaky = _flaky(2, [], "ok")

    @d.function(id="f", trigger=TriggerEvent("t/go"), retries=3)
    async def f(ctx: Context) -> str:
        return await ctx.step.run("flaky", flaky)

    h = embedded(d)
    h.send("t/go")
    run = h.only_run("f")
    assert ops(run) == [
        ("flaky", "StepError", 0),
        ("flaky", "StepError", 1),
        ("flaky", "StepRun", 2),
    ]


@modes
def test_each_step_has_its_own_retries(mode: str, embedded: StartFactory) -> None:
    d = app()
    first = _flaky(2, [], "a")
    second = _flaky(2, [], "b")
    if mode == "async":

        @d.function(id="f", trigger=TriggerEvent("t/go"), retries=3)
        async def f(ctx: Context) -> str:
            return await ctx.step.run("first", first) + await ctx.step.run("second", second)
    else:

        @d.function(id="f", trigger=TriggerEvent("t/go"), retries=3)
        def f(ctx: SyncContext) -> str:
            return ctx.step.run("first", first) + ctx.step.run("second", second)

    h = embedded(d, server=SERVER[mode])
    h.send("t/go")
    run = h.only_run("f")
    assert run["status"] == "completed", ops(run)
    assert run["output"] == "ab"
    assert [(name, op) for name, op, _ in ops(run, "second")] == [
        ("second", "StepError"),
        ("second", "StepError"),
        ("second", "StepRun"),
    ]


@modes
def test_step_that_always_fails_fails_the_run(mode: str, embedded: StartFactory) -> None:
    d = app()
    seen: list[StepError] = []

    def broken() -> None:
        raise ValueError("always broken")

    if mode == "async":

        @d.function(id="f", trigger=TriggerEvent("t/go"), retries=1)
        async def f(ctx: Context) -> None:
            try:
                await ctx.step.run("broken", broken)
            except StepError as err:
                seen.append(err)
                raise
    else:

        @d.function(id="f", trigger=TriggerEvent("t/go"), retries=1)
        def f(ctx: SyncContext) -> None:
            try:
                ctx.step.run("broken", broken)
            except StepError as err:
                seen.append(err)
                raise

    h = embedded(d, server=SERVER[mode])
    h.send("t/go")
    run = h.only_run("f")
    assert run["status"] == "failed", run
    assert ops(run, "broken") == [("broken", "StepError", 0), ("broken", "StepFailed", 1)]
    assert run["error"]["name"] == "ValueError"
    assert run["error"]["message"] == "always broken"
    assert seen and all(isinstance(e, StepError) and e.name == "ValueError" for e in seen)


@modes
def test_non_retriable_error_fails_at_once(mode: str, embedded: StartFactory) -> None:
    d = app()
    calls: list[int] = []

    def reject() -> None:
        calls.append(1)
        raise NonRetriableError("bad input")

    if mode == "async":

        @d.function(id="f", trigger=TriggerEvent("t/go"), retries=3)
        async def f(ctx: Context) -> None:
            await ctx.step.run("reject", reject)
    else:

        @d.function(id="f", trigger=TriggerEvent("t/go"), retries=3)
        def f(ctx: SyncContext) -> None:
            ctx.step.run("reject", reject)

    h = embedded(d, server=SERVER[mode])
    h.send("t/go")
    run = h.only_run("f")
    assert run["status"] == "failed", run
    assert run["error"]["name"] == "NonRetriableError"
    assert run["error"]["message"] == "bad input"
    assert len(calls) == 1
    assert [(s["op"], s["attempt"]) for s in run["steps"]] == [("FunctionError", 0)]


def test_retry_after_error_delays_the_retry(embedded: StartFactory) -> None:
    d = app()
    attempts: list[tuple[int, float]] = []

    @d.function(id="f", trigger=TriggerEvent("t/go"), retries=3)
    async def f(ctx: Context) -> int:
        def charge() -> int:
            attempts.append((ctx.attempt, time.time()))
            if ctx.attempt == 0:
                raise RetryAfterError("rate limited", after="400ms")
            return ctx.attempt

        return await ctx.step.run("charge", charge)

    h = embedded(d)
    h.send("t/go")
    run = h.only_run("f")
    assert run["status"] == "completed", run
    assert run["output"] == 1
    assert [a for a, _ in attempts] == [0, 1]
    failed = [(s["op"], s["attempt"], s["error"]["name"]) for s in run["steps"] if s["error"]]
    assert failed == [("FunctionError", 0, "RetryAfterError")]
    # The fast backoff would retry after ~50 ms; the error asked for 400 ms.
    assert attempts[1][1] - attempts[0][1] >= 0.399


def test_on_failure_handler_runs_with_the_failed_event(embedded: StartFactory) -> None:
    d = app()

    async def on_failure(ctx: Context) -> dict[str, Any]:
        return {
            "name": ctx.event.name,
            "function_id": ctx.event.data["function_id"],
            "run_id": ctx.event.data["run_id"],
            "message": ctx.event.data["error"]["message"],
            "trigger": ctx.event.data["event"]["data"],
        }

    @d.function(id="f", trigger=TriggerEvent("t/go"), retries=0, on_failure=on_failure)
    async def f(ctx: Context) -> None:
        raise ValueError("kaput")

    h = embedded(d)
    h.send("t/go", {"order": 3})
    failed = h.only_run("f")
    assert failed["status"] == "failed", failed
    handled = h.only_run("f-failure")
    assert handled["status"] == "completed", handled
    assert handled["output"] == {
        "name": "inngest/function.failed",
        "function_id": "t-f",
        "run_id": failed["run_id"],
        "message": "kaput",
        "trigger": {"order": 3},
    }


# -- triggers ---------------------------------------------------------------------------------


def test_event_id_is_an_idempotency_key(embedded: StartFactory) -> None:
    d = app()

    @d.function(id="f", trigger=TriggerEvent("t/go"))
    async def f(ctx: Context) -> Any:
        return ctx.event.data

    h = embedded(d)
    h.send("t/go", {"n": 1}, id="order-1")
    h.send("t/go", {"n": 2}, id="order-1")
    assert len(h.runs("f")) == 1
    h.send("t/go", {"n": 3}, id="order-2")
    runs = h.wait_runs("f", 2)
    assert len(h.runs("f")) == 2
    assert [h.finish(r["run_id"])["output"] for r in runs] == [{"n": 1}, {"n": 3}]


def test_trigger_expression_filters_events(embedded: StartFactory) -> None:
    d = app()

    @d.function(id="f", trigger=TriggerEvent("t/go", expression="event.data.vip == true"))
    async def f(ctx: Context) -> Any:
        return ctx.event.data

    h = embedded(d)
    h.send("t/go", {"vip": False, "n": 1})
    h.send("t/go", {"n": 2})
    h.send("t/go", {"vip": True, "n": 3})
    runs = h.runs("f")
    assert len(runs) == 1
    assert h.finish(runs[0]["run_id"])["output"] == {"vip": True, "n": 3}


def test_several_functions_run_on_the_same_event(embedded: StartFactory) -> None:
    d = app()

    @d.function(id="one", trigger=TriggerEvent("t/go"))
    async def one(ctx: Context) -> str:
        return "one"

    @d.function(id="two", trigger=TriggerEvent("t/go"))
    def two(ctx: SyncContext) -> str:
        return "two"

    h = embedded(d)
    h.send("t/go")
    assert h.only_run("one")["output"] == "one"
    assert h.only_run("two")["output"] == "two"


# -- cancel and rerun -------------------------------------------------------------------------


def test_cancelled_sleeping_run_never_continues(embedded: StartFactory) -> None:
    d = app()
    after: list[int] = []

    @d.function(id="f", trigger=TriggerEvent("t/go"))
    async def f(ctx: Context) -> None:
        await ctx.step.sleep("nap", "300ms")
        await ctx.step.run("after", lambda: after.append(1))

    @d.function(id="probe", trigger=TriggerEvent("t/probe"))
    async def probe(ctx: Context) -> str:
        await ctx.step.sleep("nap", "600ms")
        return "done"

    h = embedded(d)
    h.send("t/go")
    run_id = h.wait_runs("f")[0]["run_id"]
    h.wait_status(run_id, "sleeping")
    res = h.post(f"/v1/runs/{run_id}/cancel")
    assert res.status_code == 200, res.text
    assert res.json()["status"] == "cancelled"
    # A run started after the cancel sleeps past the cancelled run's wake time.
    h.send("t/probe")
    assert h.only_run("probe")["status"] == "completed"
    run = h.run(run_id)
    assert run["status"] == "cancelled"
    assert after == []
    assert [s["name"] for s in run["steps"]] == ["nap"]
    cancelled = h.events("inngest/function.cancelled")
    assert [e["data"]["run_id"] for e in cancelled] == [run_id]
    assert cancelled[0]["data"]["function_id"] == "t-f"


def test_rerun_starts_a_new_run_with_the_same_event(embedded: StartFactory) -> None:
    d = app()

    @d.function(id="f", trigger=TriggerEvent("t/go"))
    async def f(ctx: Context) -> Any:
        return await ctx.step.run("echo", lambda: ctx.event.data)

    h = embedded(d)
    h.send("t/go", {"n": 5})
    first = h.only_run("f")
    assert first["status"] == "completed"
    res = h.post(f"/v1/runs/{first['run_id']}/rerun")
    assert res.status_code == 202, res.text
    new_id = res.json()["run_id"]
    assert new_id != first["run_id"]
    again = h.finish(new_id)
    assert again["status"] == "completed", again
    assert again["output"] == {"n": 5}
    assert again["event"] == first["event"]
    assert len(h.runs("f")) == 2


# -- client calls -----------------------------------------------------------------------------


def _client_app(d: Durable) -> FastAPI:
    @d.function(id="order", trigger=TriggerEvent("t/order"))
    async def order(ctx: Context) -> Any:
        return ctx.event.data

    @d.function(id="price", trigger=TriggerEvent("t/price"))
    async def price(ctx: Context) -> dict[str, int]:
        total = await ctx.step.run("total", lambda: ctx.event.data["qty"] * 3)
        return {"total": total}

    @d.function(id="broken", trigger=TriggerEvent("t/broken"))
    async def broken(ctx: Context) -> None:
        raise NonRetriableError("cannot price")

    web = FastAPI()

    @web.post("/send-async")
    async def send_async(body: dict[str, Any]) -> Any:
        return await d.send_async({"name": "t/order", "data": body})

    @web.post("/send-sync")
    def send_sync(body: dict[str, Any]) -> Any:
        return d.send([{"name": "t/order", "data": body}])

    @web.post("/send-blocking-in-async")
    async def send_blocking(body: dict[str, Any]) -> Any:
        try:
            d.send({"name": "t/order", "data": body})
        except DurableError as err:
            return {"error": str(err)}
        return {"error": None}

    @web.post("/invoke-async")
    async def invoke_async(body: dict[str, Any]) -> Any:
        return {
            "output": await d.invoke_async(price, body),
            "run_id": await d.invoke_async("price", body, wait=False),
        }

    @web.post("/invoke-sync")
    def invoke_sync(body: dict[str, Any]) -> Any:
        return {"output": d.invoke(price, body), "run_id": d.invoke("t-price", body, wait=False)}

    @web.post("/invoke-failing")
    async def invoke_failing() -> Any:
        try:
            await d.invoke_async(broken)
        except RunFailedError as err:
            return {"run_id": err.run_id, "status": err.status, "error": err.error}
        return None

    return web


def _order_events(h: Harness) -> list[Any]:
    return sorted(h.finish(r["run_id"])["output"]["k"] for r in h.runs("order"))


@pytest.mark.parametrize("server", ["testclient", "uvicorn"])
def test_send_from_app_code_starts_runs(server: str, embedded: StartFactory) -> None:
    d = app()
    h = embedded(d, app=_client_app(d), server=server)
    a = h.client.post("/send-async", json={"k": "async"})
    b = h.client.post("/send-sync", json={"k": "sync"})
    assert a.status_code == 200 and b.status_code == 200, (a.text, b.text)
    assert len(a.json()) == 1 and len(b.json()) == 1
    assert d.send({"name": "t/order", "data": {"k": "test"}})
    h.wait_runs("order", 3)
    assert _order_events(h) == ["async", "sync", "test"]
    stalled = h.client.post("/send-blocking-in-async", json={"k": "x"}).json()
    assert "send_async" in stalled["error"]


@pytest.mark.parametrize("server", ["testclient", "uvicorn"])
def test_invoke_from_app_code(server: str, embedded: StartFactory) -> None:
    d = app()
    h = embedded(d, app=_client_app(d), server=server)
    for path in ("/invoke-async", "/invoke-sync"):
        res = h.client.post(path, json={"qty": 4})
        assert res.status_code == 200, res.text
        body = res.json()
        assert body["output"] == {"total": 12}
        started = h.finish(body["run_id"])
        assert started["function_id"] == "t-price"
        assert started["output"] == {"total": 12}
    assert d.invoke("price", {"qty": 5}) == {"total": 15}
    failing = h.client.post("/invoke-failing").json()
    assert failing["status"] == "failed"
    assert failing["error"]["message"] == "cannot price"
    assert h.run(failing["run_id"])["status"] == "failed"
    with pytest.raises(RunFailedError, match="cannot price"):
        d.invoke("broken")
