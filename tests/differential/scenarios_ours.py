"""The differential scenarios written with `durable`, served at /api/durable.

Each function mirrors the one with the same id in `scenarios_peer.py`.
"""

from __future__ import annotations

import asyncio
import datetime

from fastapi import FastAPI

from adapters.fastapi import Serve
from durable_core import (
    Context,
    Durable,
    NonRetriableError,
    RetryAfterError,
    StepError,
    SyncContext,
    TriggerEvent,
)

d = Durable("diff", dev=True)
HOUR = datetime.timedelta(hours=1)


def _trigger(fn_id: str) -> TriggerEvent:
    return TriggerEvent(f"diff/{fn_id}")


def _add(a: int, b: int) -> int:
    return a + b


def _always_fails() -> None:
    raise ValueError("card declined")


def _flaky(attempt: int) -> str:
    if attempt == 0:
        raise RuntimeError(f"transient failure on attempt {attempt}")
    return f"ok on attempt {attempt}"


# -- async functions --------------------------------------------------------------------------


@d.function(id="sequential", trigger=_trigger("sequential"), retries=2)
async def sequential(ctx: Context) -> dict[str, object]:
    a = await ctx.step.run("a", _add, 1, 2)
    b = await ctx.step.run("b", _add, a, 10)
    c = await ctx.step.run("c", lambda: {"sum": a + b, "who": ctx.event.data["who"]})
    return {"a": a, "b": b, "c": c}


@d.function(id="loop", trigger=_trigger("loop"), retries=2)
async def loop(ctx: Context) -> list[int]:
    out = []
    for i in range(3):
        out.append(await ctx.step.run("item", _add, i, 100))
    return out


@d.function(id="sleep", trigger=_trigger("sleep"), retries=2)
async def sleep(ctx: Context) -> str:
    before = await ctx.step.run("before", lambda: "slept")
    await ctx.step.sleep("nap", HOUR)
    after = await ctx.step.run("after", lambda: "woke")
    return f"{before} then {after}"


async def _wait(ctx: Context) -> dict[str, object]:
    ev = await ctx.step.wait_for_event(
        "approval",
        event="diff/approved",
        if_="async.data.order == event.data.order",
        timeout=HOUR,
    )
    if ev is None:
        return {"approved": False}
    return {"approved": True, "by": ev.data["by"], "name": ev.name}


@d.function(id="wait_matched", trigger=_trigger("wait_matched"), retries=2)
async def wait_matched(ctx: Context) -> dict[str, object]:
    return await _wait(ctx)


@d.function(id="wait_timeout", trigger=_trigger("wait_timeout"), retries=2)
async def wait_timeout(ctx: Context) -> dict[str, object]:
    return await _wait(ctx)


@d.function(id="child", trigger=_trigger("child"), retries=0)
async def child(ctx: Context) -> dict[str, object]:
    return {"doubled": ctx.event.data["n"] * 2}


@d.function(id="invoke", trigger=_trigger("invoke"), retries=2)
async def invoke(ctx: Context) -> dict[str, object]:
    out = await ctx.step.invoke("call-child", function=child, data={"n": 21}, timeout=HOUR)
    return {"child": out}


@d.function(id="invoke_by_id", trigger=_trigger("invoke_by_id"), retries=2)
async def invoke_by_id(ctx: Context) -> dict[str, object]:
    out = await ctx.step.invoke("call-child", function="child", data={"n": 5})
    return {"child": out}


@d.function(id="invoke_no_data", trigger=_trigger("invoke_no_data"), retries=2)
async def invoke_no_data(ctx: Context) -> object:
    return await ctx.step.invoke("call-child", function="child")


@d.function(id="invoke_failed", trigger=_trigger("invoke_failed"), retries=2)
async def invoke_failed(ctx: Context) -> dict[str, object]:
    try:
        await ctx.step.invoke("call-child", function=child, data={"n": 1})
    except StepError as err:
        return {"caught": err.name, "message": err.message}
    return {"caught": None}


@d.function(id="parallel_gather", trigger=_trigger("parallel_gather"), retries=2)
async def parallel_gather(ctx: Context) -> dict[str, object]:
    pair = await asyncio.gather(ctx.step.run("p", _add, 1, 1), ctx.step.run("p", _add, 2, 2))
    after = await ctx.step.run("after", _add, pair[0], pair[1])
    return {"pair": list(pair), "after": after}


@d.function(id="parallel_explicit", trigger=_trigger("parallel_explicit"), retries=2)
async def parallel_explicit(ctx: Context) -> dict[str, object]:
    pair = await ctx.step.parallel(
        lambda: ctx.step.run("left", _add, 1, 1), lambda: ctx.step.run("right", _add, 2, 2)
    )
    last = await ctx.step.run("last", lambda: "done")
    return {"pair": list(pair), "last": last}


@d.function(id="parallel_mixed", trigger=_trigger("parallel_mixed"), retries=2)
async def parallel_mixed(ctx: Context) -> dict[str, object]:
    out = await asyncio.gather(
        ctx.step.run("work", lambda: "worked"),
        ctx.step.sleep("pause", HOUR),
        ctx.step.wait_for_event("signal", event="diff/go", timeout=HOUR),
    )
    return {"work": out[0], "pause": out[1], "signal": out[2] is None}


@d.function(id="parallel_retry", trigger=_trigger("parallel_retry"), retries=2)
async def parallel_retry(ctx: Context) -> list[object]:
    out = await ctx.step.parallel(
        lambda: ctx.step.run("flaky", _flaky, ctx.attempt),
        lambda: ctx.step.run("steady", _add, 1, 2),
    )
    return list(out)


@d.function(id="step_retry", trigger=_trigger("step_retry"), retries=2)
async def step_retry(ctx: Context) -> dict[str, object]:
    got = await ctx.step.run("flaky", _flaky, ctx.attempt)
    return {"got": got}


@d.function(id="step_failed_return", trigger=_trigger("step_failed_return"), retries=1)
async def step_failed_return(ctx: Context) -> str:
    try:
        await ctx.step.run("charge", _always_fails)
    except StepError:
        return await ctx.step.run("refund", lambda: "refunded")
    return "charged"


@d.function(id="step_failed_reraise", trigger=_trigger("step_failed_reraise"), retries=1)
async def step_failed_reraise(ctx: Context) -> None:
    await ctx.step.run("charge", _always_fails)


@d.function(id="step_error_caught", trigger=_trigger("step_error_caught"), retries=1)
async def step_error_caught(ctx: Context) -> dict[str, object]:
    try:
        await ctx.step.run("charge", _always_fails)
    except StepError as err:
        return {"name": err.name, "message": err.message, "has_stack": err.stack is not None}
    return {"name": None}


def _refuse() -> None:
    raise NonRetriableError("the order was cancelled")


@d.function(id="non_retriable_step", trigger=_trigger("non_retriable_step"), retries=3)
async def non_retriable_step(ctx: Context) -> None:
    await ctx.step.run("first", lambda: 1)
    await ctx.step.run("refuse", _refuse)


@d.function(id="non_retriable_fn", trigger=_trigger("non_retriable_fn"), retries=3)
async def non_retriable_fn(ctx: Context) -> None:
    n = await ctx.step.run("first", lambda: 1)
    raise NonRetriableError(f"gave up after {n} step")


@d.function(id="fn_error", trigger=_trigger("fn_error"), retries=3)
async def fn_error(ctx: Context) -> None:
    await ctx.step.run("first", lambda: 1)
    raise KeyError("missing")


def _busy() -> None:
    raise RetryAfterError("rate limited", datetime.timedelta(minutes=5))


@d.function(id="retry_after_step", trigger=_trigger("retry_after_step"), retries=3)
async def retry_after_step(ctx: Context) -> None:
    await ctx.step.run("call-api", _busy)


# -- sync functions ---------------------------------------------------------------------------


@d.function(id="sync_sequential", trigger=_trigger("sync_sequential"), retries=2)
def sync_sequential(ctx: SyncContext) -> dict[str, object]:
    a = ctx.step.run("a", _add, 1, 2)
    ctx.step.sleep("nap", HOUR)
    b = ctx.step.run("b", _add, a, 10)
    total = [ctx.step.run("item", _add, i, b) for i in range(2)]
    return {"a": a, "b": b, "total": total}


@d.function(id="sync_parallel", trigger=_trigger("sync_parallel"), retries=2)
def sync_parallel(ctx: SyncContext) -> dict[str, object]:
    pair = ctx.step.parallel(
        lambda: ctx.step.run("left", _add, 1, 1), lambda: ctx.step.run("right", _add, 2, 2)
    )
    last = ctx.step.run("last", lambda: "done")
    return {"pair": list(pair), "last": last}


@d.function(id="sync_step_errors", trigger=_trigger("sync_step_errors"), retries=1)
def sync_step_errors(ctx: SyncContext) -> dict[str, object]:
    got = ctx.step.run("flaky", _flaky, ctx.attempt)
    try:
        ctx.step.run("charge", _always_fails)
    except StepError as err:
        return {"got": got, "caught": err.name, "message": err.message}
    return {"got": got, "caught": None}


@d.function(id="sync_non_retriable", trigger=_trigger("sync_non_retriable"), retries=2)
def sync_non_retriable(ctx: SyncContext) -> None:
    ctx.step.run("refuse", _refuse)


app = FastAPI()
Serve(app, d, embedded=False)  # the SDK alone: these tests play the orchestrator
