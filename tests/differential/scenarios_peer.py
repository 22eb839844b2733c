"""The differential scenarios written with the `inngest` SDK (0.5.19), served at /api/inngest.

NOTE: where inngest-py 0.5.19 differs from PROTOCOL.md (our SDK follows inngest-py there):

- `Sleep` is reported with `name` = the wake time (ISO 8601, UTC, milliseconds, `Z`) and
  `opts` = null, never `opts.duration`.
- `WaitForEvent` carries the event name in `name`; `opts` is `{"if", "timeout"}` only.
- Every op carries `"data": null` unless it has output, including `StepPlanned`, `Sleep`,
  `WaitForEvent`, `InvokeFunction`, `StepError` and `StepFailed`.
- A `NonRetriableError` (or `RetryAfterError`) raised inside a step is not a `StepFailed`: it
  ends the request as a function-level 500 (`x-inngest-no-retry: true`, or `retry-after`).
- A memoized step error re-raised by the function is a 500 with `code: step_errored`, the
  original error's `name` and `message`, and `x-inngest-no-retry: true`.
- After a parallel group the server sets `disable_immediate_execution`; a lone new `step.run`
  found then is reported as `StepPlanned` instead of being run in that request.
"""

from __future__ import annotations

import datetime

from fastapi import FastAPI

from .inngest_sdk import inngest

client = inngest.Inngest(app_id="diff", is_production=False)
HOUR = datetime.timedelta(hours=1)


def _trigger(fn_id: str) -> inngest.TriggerEvent:
    return inngest.TriggerEvent(event=f"diff/{fn_id}")


def _add(a: int, b: int) -> int:
    return a + b


def _always_fails() -> None:
    raise ValueError("card declined")


def _flaky(attempt: int) -> str:
    if attempt == 0:
        raise RuntimeError(f"transient failure on attempt {attempt}")
    return f"ok on attempt {attempt}"


# -- async functions --------------------------------------------------------------------------


@client.create_function(fn_id="sequential", trigger=_trigger("sequential"), retries=2)
async def sequential(ctx: inngest.Context) -> dict[str, object]:
    a = await ctx.step.run("a", _add, 1, 2)
    b = await ctx.step.run("b", _add, a, 10)
    c = await ctx.step.run("c", lambda: {"sum": a + b, "who": ctx.event.data["who"]})
    return {"a": a, "b": b, "c": c}


@client.create_function(fn_id="loop", trigger=_trigger("loop"), retries=2)
async def loop(ctx: inngest.Context) -> list[int]:
    out = []
    for i in range(3):
        out.append(await ctx.step.run("item", _add, i, 100))
    return out


@client.create_function(fn_id="sleep", trigger=_trigger("sleep"), retries=2)
async def sleep(ctx: inngest.Context) -> str:
    before = await ctx.step.run("before", lambda: "slept")
    await ctx.step.sleep("nap", HOUR)
    after = await ctx.step.run("after", lambda: "woke")
    return f"{before} then {after}"


async def _wait(ctx: inngest.Context) -> dict[str, object]:
    ev = await ctx.step.wait_for_event(
        "approval",
        event="diff/approved",
        if_exp="async.data.order == event.data.order",
        timeout=HOUR,
    )
    if ev is None:
        return {"approved": False}
    return {"approved": True, "by": ev.data["by"], "name": ev.name}


@client.create_function(fn_id="wait_matched", trigger=_trigger("wait_matched"), retries=2)
async def wait_matched(ctx: inngest.Context) -> dict[str, object]:
    return await _wait(ctx)


@client.create_function(fn_id="wait_timeout", trigger=_trigger("wait_timeout"), retries=2)
async def wait_timeout(ctx: inngest.Context) -> dict[str, object]:
    return await _wait(ctx)


@client.create_function(fn_id="child", trigger=_trigger("child"), retries=0)
async def child(ctx: inngest.Context) -> dict[str, object]:
    return {"doubled": ctx.event.data["n"] * 2}


@client.create_function(fn_id="invoke", trigger=_trigger("invoke"), retries=2)
async def invoke(ctx: inngest.Context) -> dict[str, object]:
    out = await ctx.step.invoke("call-child", function=child, data={"n": 21}, timeout=HOUR)
    return {"child": out}


@client.create_function(fn_id="invoke_by_id", trigger=_trigger("invoke_by_id"), retries=2)
async def invoke_by_id(ctx: inngest.Context) -> dict[str, object]:
    out = await ctx.step.invoke_by_id("call-child", function_id="child", data={"n": 5})
    return {"child": out}


@client.create_function(fn_id="invoke_no_data", trigger=_trigger("invoke_no_data"), retries=2)
async def invoke_no_data(ctx: inngest.Context) -> object:
    return await ctx.step.invoke_by_id("call-child", function_id="child")


@client.create_function(fn_id="invoke_failed", trigger=_trigger("invoke_failed"), retries=2)
async def invoke_failed(ctx: inngest.Context) -> dict[str, object]:
    try:
        await ctx.step.invoke("call-child", function=child, data={"n": 1})
    except inngest.StepError as err:
        return {"caught": err.name, "message": err.message}
    return {"caught": None}


async def _parallel_same_id(ctx: inngest.Context) -> dict[str, object]:
    pair = await ctx.group.parallel(
        (lambda: ctx.step.run("p", _add, 1, 1), lambda: ctx.step.run("p", _add, 2, 2))
    )
    after = await ctx.step.run("after", _add, pair[0], pair[1])
    return {"pair": list(pair), "after": after}


@client.create_function(fn_id="parallel_gather", trigger=_trigger("parallel_gather"), retries=2)
async def parallel_gather(ctx: inngest.Context) -> dict[str, object]:
    return await _parallel_same_id(ctx)


@client.create_function(fn_id="parallel_explicit", trigger=_trigger("parallel_explicit"), retries=2)
async def parallel_explicit(ctx: inngest.Context) -> dict[str, object]:
    pair = await ctx.group.parallel(
        (lambda: ctx.step.run("left", _add, 1, 1), lambda: ctx.step.run("right", _add, 2, 2))
    )
    last = await ctx.step.run("last", lambda: "done")
    return {"pair": list(pair), "last": last}


@client.create_function(fn_id="parallel_mixed", trigger=_trigger("parallel_mixed"), retries=2)
async def parallel_mixed(ctx: inngest.Context) -> dict[str, object]:
    out = await ctx.group.parallel(
        (
            lambda: ctx.step.run("work", lambda: "worked"),
            lambda: ctx.step.sleep("pause", HOUR),
            lambda: ctx.step.wait_for_event("signal", event="diff/go", timeout=HOUR),
        )
    )
    return {"work": out[0], "pause": out[1], "signal": out[2] is None}


@client.create_function(fn_id="parallel_retry", trigger=_trigger("parallel_retry"), retries=2)
async def parallel_retry(ctx: inngest.Context) -> list[object]:
    out = await ctx.group.parallel(
        (
            lambda: ctx.step.run("flaky", _flaky, ctx.attempt),
            lambda: ctx.step.run("steady", _add, 1, 2),
        )
    )
    return list(out)


@client.create_function(fn_id="step_retry", trigger=_trigger("step_retry"), retries=2)
async def step_retry(ctx: inngest.Context) -> dict[str, object]:
    got = await ctx.step.run("flaky", _flaky, ctx.attempt)
    return {"got": got}


@client.create_function(
    fn_id="step_failed_return", trigger=_trigger("step_failed_return"), retries=1
)
async def step_failed_return(ctx: inngest.Context) -> str:
    try:
        await ctx.step.run("charge", _always_fails)
    except inngest.StepError:
        return await ctx.step.run("refund", lambda: "refunded")
    return "charged"


@client.create_function(
    fn_id="step_failed_reraise", trigger=_trigger("step_failed_reraise"), retries=1
)
async def step_failed_reraise(ctx: inngest.Context) -> None:
    await ctx.step.run("charge", _always_fails)


@client.create_function(fn_id="step_error_caught", trigger=_trigger("step_error_caught"), retries=1)
async def step_error_caught(ctx: inngest.Context) -> dict[str, object]:
    try:
        await ctx.step.run("charge", _always_fails)
    except inngest.StepError as err:
        return {"name": err.name, "message": err.message, "has_stack": err.stack is not None}
    return {"name": None}


def _refuse() -> None:
    raise inngest.NonRetriableError("the order was cancelled")


@client.create_function(
    fn_id="non_retriable_step", trigger=_trigger("non_retriable_step"), retries=3
)
async def non_retriable_step(ctx: inngest.Context) -> None:
    await ctx.step.run("first", lambda: 1)
    await ctx.step.run("refuse", _refuse)


@client.create_function(fn_id="non_retriable_fn", trigger=_trigger("non_retriable_fn"), retries=3)
async def non_retriable_fn(ctx: inngest.Context) -> None:
    n = await ctx.step.run("first", lambda: 1)
    raise inngest.NonRetriableError(f"gave up after {n} step")


@client.create_function(fn_id="fn_error", trigger=_trigger("fn_error"), retries=3)
async def fn_error(ctx: inngest.Context) -> None:
    await ctx.step.run("first", lambda: 1)
    raise KeyError("missing")


def _busy() -> None:
    raise inngest.RetryAfterError("rate limited", datetime.timedelta(minutes=5))


@client.create_function(fn_id="retry_after_step", trigger=_trigger("retry_after_step"), retries=3)
async def retry_after_step(ctx: inngest.Context) -> None:
    await ctx.step.run("call-api", _busy)


# -- sync functions ---------------------------------------------------------------------------


@client.create_function(fn_id="sync_sequential", trigger=_trigger("sync_sequential"), retries=2)
def sync_sequential(ctx: inngest.ContextSync) -> dict[str, object]:
    a = ctx.step.run("a", _add, 1, 2)
    ctx.step.sleep("nap", HOUR)
    b = ctx.step.run("b", _add, a, 10)
    total = [ctx.step.run("item", _add, i, b) for i in range(2)]
    return {"a": a, "b": b, "total": total}


@client.create_function(fn_id="sync_parallel", trigger=_trigger("sync_parallel"), retries=2)
def sync_parallel(ctx: inngest.ContextSync) -> dict[str, object]:
    pair = ctx.group.parallel(
        (lambda: ctx.step.run("left", _add, 1, 1), lambda: ctx.step.run("right", _add, 2, 2))
    )
    last = ctx.step.run("last", lambda: "done")
    return {"pair": list(pair), "last": last}


@client.create_function(fn_id="sync_step_errors", trigger=_trigger("sync_step_errors"), retries=1)
def sync_step_errors(ctx: inngest.ContextSync) -> dict[str, object]:
    got = ctx.step.run("flaky", _flaky, ctx.attempt)
    try:
        ctx.step.run("charge", _always_fails)
    except inngest.StepError as err:
        return {"got": got, "caught": err.name, "message": err.message}
    return {"got": got, "caught": None}


@client.create_function(
    fn_id="sync_non_retriable", trigger=_trigger("sync_non_retriable"), retries=2
)
def sync_non_retriable(ctx: inngest.ContextSync) -> None:
    ctx.step.run("refuse", _refuse)


FUNCTIONS = [
    sequential,
    loop,
    sleep,
    wait_matched,
    wait_timeout,
    child,
    invoke,
    invoke_by_id,
    invoke_no_data,
    invoke_failed,
    parallel_gather,
    parallel_explicit,
    parallel_mixed,
    parallel_retry,
    step_retry,
    step_failed_return,
    step_failed_reraise,
    step_error_caught,
    non_retriable_step,
    non_retriable_fn,
    fn_error,
    retry_after_step,
    sync_sequential,
    sync_parallel,
    sync_step_errors,
    sync_non_retriable,
]

app = FastAPI()
inngest.fast_api.serve(app, client, FUNCTIONS)
