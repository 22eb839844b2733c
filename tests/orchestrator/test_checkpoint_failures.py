"""A step's result is made durable (checkpointed) before the next step runs. When that fails,
the request ends, whatever the function catches: a store error is retried in place when the
store calls it transient, and otherwise ends the request, which is retried with the step
kept; a run that has ended (cancelled, timed out) stops its request at its next checkpoint;
and an in-process request that does not answer within `request_timeout` is treated like an
HTTP timeout. Before, a function catching `Exception` around a step swallowed these errors and
its request hung for ever, holding its lease and its concurrency slot."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from durable_core import Context, Durable, SyncContext, TriggerEvent
from durable_core.events import Event
from durable_core.orchestrator.service import FAST_BACKOFF, Orchestrator
from durable_core.orchestrator.store import RunFilter, RunRecord, open_store

DEADLINE = 15.0  # seconds; every run here finishes in well under one


@contextlib.asynccontextmanager
async def orchestrated(
    d: Durable, database_url: str, **options: Any
) -> AsyncIterator[Orchestrator]:
    """An orchestrator of its own calling `d` in-process (as in embedded mode)."""
    orch = Orchestrator(open_store(database_url), backoff=FAST_BACKOFF, **options)
    url = orch.inproc.add(d)
    await orch.start()
    try:
        configs = [cfg for fn in d.functions for cfg in fn.configs(url)]
        await orch.register({"appname": d.app_id, "url": url, "functions": configs})
        yield orch
    finally:
        await orch.stop()


async def start(orch: Orchestrator, name: str, data: dict[str, Any] | None = None) -> str:
    """Send an event; the id of the run it started."""
    [event_id] = await orch.send([Event(name=name, data=data or {})])

    async def started() -> str | None:
        async with orch.store.snapshot() as tx:
            runs = await tx.list_runs(RunFilter(limit=100))
        return next((r.run_id for r in runs if r.events[0]["id"] == event_id), None)

    return str(await poll(started, f"the run of event {name}"))


async def poll(probe: Callable[[], Any], what: str, deadline: float = DEADLINE) -> Any:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        found = await probe()
        if found:
            return found
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def finished(orch: Orchestrator, run_id: str) -> RunRecord:
    run = await orch.wait_for_run(run_id, DEADLINE)
    assert run is not None and run.status.finished, run
    return run


async def history(orch: Orchestrator, run_id: str) -> list[tuple[str, str]]:
    async with orch.store.snapshot() as tx:
        return [(h.name, h.op) for h in await tx.get_history(run_id)]


def three_steps(d: Durable, flavour: str, ran: list[str]) -> None:
    """Function `f`: steps a, b, c, with b's failures caught (as user code may)."""

    def step(name: str) -> Callable[[], str]:
        return lambda: ran.append(name) or name

    if flavour == "async":

        @d.function(id="f", trigger=TriggerEvent("t/go"))
        async def f(ctx: Context) -> list[str]:
            a = await ctx.step.run("a", step("a"))
            try:
                b = await ctx.step.run("b", step("b"))
            except Exception as err:
                b = f"swallowed {type(err).__name__}"
            return [a, b, await ctx.step.run("c", step("c"))]
    else:

        @d.function(id="f", trigger=TriggerEvent("t/go"))
        def f(ctx: SyncContext) -> list[str]:
            a = ctx.step.run("a", step("a"))
            try:
                b = ctx.step.run("b", step("b"))
            except Exception as err:
                b = f"swallowed {type(err).__name__}"
            return [a, b, ctx.step.run("c", step("c"))]


def failing_checkpoints(
    orch: Orchestrator, errors: list[BaseException], transient: bool = False
) -> list[BaseException]:
    """Make the store's next checkpoints raise `errors`, one each; returns what was raised."""
    store, raised = orch.store, []
    checkpoint, is_transient = store.checkpoint, store.transient

    async def flaky(rec: Any, memo: Any) -> bool:
        if errors:
            raised.append(errors.pop(0))
            raise raised[-1]
        return await checkpoint(rec, memo)

    store.checkpoint = flaky  # type: ignore[method-assign]
    if transient:
        store.transient = lambda err: err in raised or is_transient(err)  # type: ignore[method-assign]
    return raised


@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_a_store_error_in_a_checkpoint_ends_the_request_and_the_step_is_kept(
    flavour: str, database_url: str
) -> None:
    d, ran = Durable("t", dev=True), []
    three_steps(d, flavour, ran)
    async with orchestrated(d, database_url) as orch:
        raised = failing_checkpoints(orch, [sqlite3.OperationalError("disk I/O error")])
        run = await finished(orch, await start(orch, "t/go"))
        assert raised, "no checkpoint failed"
        assert run.status.value == "completed", run
        assert run.output == ["a", "b", "c"]  # the error was not the function's to catch
        assert ran == ["a", "b", "c"]  # "a" was stored with the failed request's answer
        steps = await history(orch, run.run_id)
        assert ("(function)", "FunctionError") in steps, steps


@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_a_transient_store_error_in_a_checkpoint_is_retried_in_place(
    flavour: str, database_url: str
) -> None:
    d, ran = Durable("t", dev=True), []
    three_steps(d, flavour, ran)
    async with orchestrated(d, database_url) as orch:
        errors: list[BaseException] = [RuntimeError("deadlock"), RuntimeError("deadlock")]
        raised = failing_checkpoints(orch, errors, transient=True)
        run = await finished(orch, await start(orch, "t/go"))
        assert len(raised) == 2
        assert run.status.value == "completed" and run.output == ["a", "b", "c"], run
        assert ran == ["a", "b", "c"]
        assert [op for _, op in await history(orch, run.run_id)] == ["StepRun"] * 3


@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_a_cancelled_run_stops_its_request_at_the_next_checkpoint(
    flavour: str, database_url: str
) -> None:
    """The run is cancelled mid-request; the function catches every step error. Its request
    ends at the next checkpoint and frees the orchestrator's only worker."""
    d, ran = Durable("t", dev=True), []

    def work(n: int) -> int:
        ran.append(n)
        time.sleep(0.01)
        return n

    if flavour == "async":

        @d.function(id="f", trigger=TriggerEvent("t/go"))
        async def f(ctx: Context) -> str:
            for n in range(ctx.event.data["steps"]):
                with contextlib.suppress(Exception):
                    await ctx.step.run("work", work, n)
            return "done"
    else:

        @d.function(id="f", trigger=TriggerEvent("t/go"))
        def f(ctx: SyncContext) -> str:
            for n in range(ctx.event.data["steps"]):
                with contextlib.suppress(Exception):
                    ctx.step.run("work", work, n)
            return "done"

    async with orchestrated(d, database_url, concurrency=1) as orch:
        long = await start(orch, "t/go", {"steps": 2000})
        await poll(lambda: asyncio.sleep(0, len(ran) >= 3), "the long run's first steps")
        await orch.cancel(long)
        assert (await finished(orch, long)).status.value == "cancelled"
        after = await finished(orch, await start(orch, "t/go", {"steps": 1}))
        assert after.status.value == "completed" and after.output == "done", after
        assert ran[-1] == 0 and len(ran) < 2000, "the cancelled run's request went on"


@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_an_in_process_request_past_request_timeout_is_retried_like_an_http_timeout(
    flavour: str, database_url: str
) -> None:
    d, release, attempts = Durable("t", dev=True), threading.Event(), []
    if flavour == "async":

        async def slow() -> str:
            attempts.append(1)
            if len(attempts) == 1:
                await asyncio.sleep(3600)
            return "answered"

        @d.function(id="f", trigger=TriggerEvent("t/go"))
        async def f(ctx: Context) -> str:
            return await ctx.step.run("slow", slow)
    else:

        def slow_sync() -> str:
            attempts.append(1)
            if len(attempts) == 1:
                release.wait(DEADLINE)
            return "answered"

        @d.function(id="f", trigger=TriggerEvent("t/go"))
        def f(ctx: SyncContext) -> str:
            return ctx.step.run("slow", slow_sync)

    try:
        async with orchestrated(d, database_url, request_timeout=0.5) as orch:
            run = await finished(orch, await start(orch, "t/go"))
            assert run.status.value == "completed" and run.output == "answered", run
            timed_out = [s for s in await history(orch, run.run_id) if s[1] == "FunctionError"]
            assert len(timed_out) == 1, timed_out
            assert len(attempts) == 2
    finally:
        release.set()
