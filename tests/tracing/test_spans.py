"""The spans of a traced run, through the in-memory test harness: one per step attempt with
its attributes and outcome, user spans nested under the step that opened them, and every
span of the run in one trace under the run span."""

from __future__ import annotations

import asyncio
import hashlib

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import StatusCode

from durable_core import Context, Durable, NonRetriableError, StepError, SyncContext, TriggerEvent
from durable_core.testing import run, run_sync
from durable_core.tracing import (
    FUNCTION_ID,
    RUN_ID,
    RUN_OUTCOME,
    STEP_ATTEMPT,
    STEP_ID,
    STEP_NAME,
    STEP_OUTCOME,
)

from .conftest import Spans

EVENT = {"name": "shop/order", "data": {"n": 2}, "ts": 1_700_000_000_000}


def app(spans: Spans) -> Durable:
    return Durable("shop", dev=True, tracing=spans.provider)


def flaky(failures: int) -> object:
    """A step handler that raises `failures` times, then returns how many tries it took."""
    tries = [0]

    def handler() -> int:
        tries[0] += 1
        if tries[0] <= failures:
            raise RuntimeError(f"try {tries[0]} failed")
        return tries[0]

    return handler


def test_a_span_per_step_attempt_with_its_attributes(spans: Spans) -> None:
    d = app(spans)

    @d.function(id="order", trigger=TriggerEvent("shop/order"))
    async def order(ctx: Context) -> int:
        a = await ctx.step.run("reserve", lambda: 1)
        await ctx.step.sleep("cool-off", "1h")
        return a + await ctx.step.run("charge", lambda: 2)

    result = asyncio.run(run(order, event=EVENT))
    assert result.status == "completed"
    reserve, charge = spans.steps()
    assert dict(reserve.attributes or {}) | {} == {
        RUN_ID: result.run_id,
        FUNCTION_ID: "shop-order",
        STEP_ID: "reserve",
        STEP_NAME: "reserve",
        STEP_ATTEMPT: 0,
        STEP_OUTCOME: "ok",
    }
    assert reserve.name == "step reserve"
    assert charge.attributes[STEP_ID] == "charge"  # type: ignore[index]
    assert reserve.status.status_code is StatusCode.UNSET
    assert [s.name for s in spans.all()] == ["step reserve", "step charge", "run shop-order"]


def test_a_retried_step_gives_an_attempt_span_per_try(spans: Spans) -> None:
    d = app(spans)
    charge = flaky(1)
    refund = flaky(10)

    @d.function(id="order", trigger=TriggerEvent("shop/order"), retries=2)
    def order(ctx: SyncContext) -> str:
        ctx.step.run("charge", charge)
        try:
            ctx.step.run("refund", refund)
        except StepError:
            return "refund failed"
        return "refunded"

    result = run_sync(order, event=EVENT)
    assert result.output == "refund failed"
    tries = [
        (s.attributes[STEP_ATTEMPT], s.attributes[STEP_OUTCOME]) for s in spans.steps("charge")
    ]  # type: ignore[index]
    assert tries == [(0, "retrying"), (1, "ok")]
    tries = [
        (s.attributes[STEP_ATTEMPT], s.attributes[STEP_OUTCOME]) for s in spans.steps("refund")
    ]  # type: ignore[index]
    assert tries == [(0, "retrying"), (1, "retrying"), (2, "failed")]
    failed = spans.steps("refund")[-1]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "RuntimeError: try 3 failed"
    assert [e.name for e in failed.events] == ["exception"]
    [done] = spans.runs()
    assert done.attributes[RUN_OUTCOME] == "completed"  # type: ignore[index]


def test_a_non_retriable_error_fails_the_step_and_the_run_at_once(spans: Spans) -> None:
    d = app(spans)

    def refuse() -> None:
        raise NonRetriableError("card declined")

    @d.function(id="order", trigger=TriggerEvent("shop/order"))
    async def order(ctx: Context) -> None:
        await ctx.step.run("charge", refuse)

    result = asyncio.run(run(order, event=EVENT))
    assert result.status == "failed"
    [attempt] = spans.steps("charge")
    assert attempt.attributes[STEP_OUTCOME] == "failed"  # type: ignore[index]
    [failed] = spans.runs()
    assert failed.attributes[RUN_OUTCOME] == "failed"  # type: ignore[index]
    assert failed.status.status_code is StatusCode.ERROR
    assert "card declined" in (failed.status.description or "")


def test_a_function_that_raises_is_traced_as_failed_after_its_last_attempt(spans: Spans) -> None:
    d = app(spans)

    @d.function(id="order", trigger=TriggerEvent("shop/order"), retries=1)
    def order(ctx: SyncContext) -> None:
        ctx.step.run("first", lambda: 1)
        raise ValueError("no stock")

    result = run_sync(order, event=EVENT)
    assert result.status == "failed"
    [failed] = spans.runs()  # emitted once: not on the first attempt, which is retried
    assert failed.attributes[RUN_OUTCOME] == "failed"  # type: ignore[index]
    assert failed.status.description == "ValueError: no stock"


def test_user_spans_nest_under_the_step_span_async(spans: Spans) -> None:
    d = app(spans)
    tracer = spans.provider.get_tracer("shop")

    async def charge() -> str:
        with tracer.start_as_current_span("call the bank"):
            await asyncio.sleep(0)
            with tracer.start_as_current_span("parse the answer"):
                return "ok"

    @d.function(id="order", trigger=TriggerEvent("shop/order"))
    async def order(ctx: Context) -> str:
        with tracer.start_as_current_span("in the function body"):
            return await ctx.step.run("charge", charge)

    asyncio.run(run(order, event=EVENT))
    [step] = spans.steps("charge")
    [bank] = spans.named("call the bank")
    [parse] = spans.named("parse the answer")
    assert bank.parent is not None and bank.parent.span_id == step.context.span_id
    assert parse.parent is not None and parse.parent.span_id == bank.context.span_id
    assert bank.context.trace_id == step.context.trace_id


def test_user_spans_nest_under_the_step_span_sync(spans: Spans) -> None:
    d = app(spans)
    tracer = spans.provider.get_tracer("shop")

    def charge() -> str:
        with tracer.start_as_current_span("call the bank"):
            return "ok"

    @d.function(id="order", trigger=TriggerEvent("shop/order"))
    def order(ctx: SyncContext) -> str:
        return ctx.step.run("charge", charge)

    run_sync(order, event=EVENT)
    [step] = spans.steps("charge")
    [bank] = spans.named("call the bank")
    assert bank.parent is not None and bank.parent.span_id == step.context.span_id


def test_parallel_steps_are_spans_of_one_trace_under_the_run_span(spans: Spans) -> None:
    d = app(spans)

    @d.function(id="fan", trigger=TriggerEvent("shop/order"))
    async def fan(ctx: Context) -> list[int]:
        return list(await asyncio.gather(*(ctx.step.run(f"p{i}", lambda i=i: i) for i in range(3))))

    @d.function(id="fan-sync", trigger=TriggerEvent("shop/order"))
    def fan_sync(ctx: SyncContext) -> list[int]:
        return list(
            ctx.step.parallel(*(lambda i=i: ctx.step.run(f"p{i}", lambda: i) for i in range(3)))
        )

    for fn in (fan, fan_sync):
        spans.exporter.clear()
        result = asyncio.run(run(fn, event=EVENT))
        assert result.output == [0, 1, 2]
        [root] = spans.runs()
        steps = spans.steps()
        assert sorted(s.attributes[STEP_ID] for s in steps) == ["p0", "p1", "p2"]  # type: ignore[index]
        assert {s.context.trace_id for s in steps} == {root.context.trace_id}
        assert {s.parent.span_id for s in steps if s.parent} == {root.context.span_id}


def test_the_trace_and_run_span_ids_derive_from_the_run_id(spans: Spans) -> None:
    d = app(spans)

    @d.function(id="order", trigger=TriggerEvent("shop/order"))
    async def order(ctx: Context) -> int:
        return await ctx.step.run("only", lambda: 1)

    result = asyncio.run(run(order, event=EVENT))
    digest = hashlib.sha256(result.run_id.encode()).digest()
    [root] = spans.runs()
    assert root.context.trace_id == int.from_bytes(digest[:16], "big")
    assert root.context.span_id == int.from_bytes(digest[16:24], "big")
    assert root.parent is None
    assert root.start_time == EVENT["ts"] * 1_000_000  # a run id without a time: the event's


def test_the_samplers_decision_on_the_run_holds_for_its_steps() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))  # keeps no new trace
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    d = Durable("shop", dev=True, tracing=provider)

    @d.function(id="order", trigger=TriggerEvent("shop/order"))
    async def order(ctx: Context) -> int:
        return await ctx.step.run("only", lambda: 1)

    assert asyncio.run(run(order, event=EVENT)).output == 1
    assert exporter.get_finished_spans() == ()
