"""durable_core.testing: durable functions run to completion in memory, with stubs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from typing import Any

import pydantic
import pytest

from durable_core import (
    Context,
    Durable,
    Event,
    FetchResponse,
    NonRetriableError,
    RetryAfterError,
    Signal,
    StepError,
    SyncContext,
    TriggerCron,
    TriggerEvent,
)
from durable_core.testing import HarnessError, RunResult, run, run_sync

ORDER = {"name": "shop/order", "data": {"order_id": "o1", "amount": 42}}


class Receipt(pydantic.BaseModel):
    charge_id: str
    amount: int


@dataclasses.dataclass
class Parcel:
    tracking: str
    weight_kg: float


def charge() -> Receipt:
    return Receipt(charge_id="ch_1", amount=42)


def ship() -> Parcel:
    return Parcel(tracking="TR-9", weight_kg=1.5)


def app() -> Durable:
    return Durable("shop", dev=True)


# -- plain runs --------------------------------------------------------------------------------


async def test_async_function_runs_to_completion_with_typed_step_outputs() -> None:
    d = app()
    seen: list[str] = []

    @d.function(id="order", trigger=TriggerEvent("shop/order"))
    async def order(ctx: Context) -> dict[str, Any]:
        receipt = await ctx.step.run("charge", charge)
        parcel = await ctx.step.run("ship", ship)
        seen.append(f"{type(receipt).__name__}/{type(parcel).__name__}")
        return {"order": ctx.event.data["order_id"], "charge": receipt, "parcel": parcel}

    result = await run(order, event=ORDER)

    assert result.status == "completed"
    assert result.error is None
    assert result.output == {
        "order": "o1",
        "charge": {"charge_id": "ch_1", "amount": 42},
        "parcel": {"tracking": "TR-9", "weight_kg": 1.5},
    }
    # Every replay restores the stored JSON as the handlers' return types.
    assert set(seen) == {"Receipt/Parcel"}
    assert [(s.id, s.op, s.attempts) for s in result.steps] == [
        ("charge", "StepRun", 1),
        ("ship", "StepRun", 1),
    ]
    assert result.step("ship").output == {"tracking": "TR-9", "weight_kg": 1.5}
    assert result.requests == 3  # one per step, one to return


def test_sync_function_with_parallel_steps() -> None:
    d = app()
    calls: list[str] = []

    def fetch(name: str) -> str:
        calls.append(name)
        return name.upper()

    @d.function(id="fan", trigger=TriggerEvent("shop/fan"))
    def fan(ctx: SyncContext) -> list[str]:
        first = ctx.step.run("first", fetch, "a")
        left, right = ctx.step.parallel(
            lambda: ctx.step.run("left", fetch, "b"),
            lambda: ctx.step.run("right", fetch, "c"),
        )
        last = ctx.step.run("last", fetch, "d")
        return [first, left, right, last]

    result = run_sync(fan, event={"name": "shop/fan"})

    assert result.status == "completed"
    assert result.output == ["A", "B", "C", "D"]
    assert sorted(calls) == ["a", "b", "c", "d"]  # each handler ran once
    assert [s.id for s in result.steps] == ["first", "left", "right", "last"]
    # "first" runs at once; the plan of two; one request per planned step; after a parallel
    # batch, discovery disables immediate execution, so "last" is planned, then run; the end.
    assert result.requests == 7


async def test_asyncio_gather_parallel_steps_with_a_reused_id() -> None:
    d = app()

    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    @d.function(id="gather", trigger=TriggerEvent("shop/gather"))
    async def gather(ctx: Context) -> list[int]:
        results = await asyncio.gather(*(ctx.step.run("double", double, i) for i in range(3)))
        return list(results)

    result = await run(gather, event={"name": "shop/gather"})

    assert result.output == [0, 2, 4]
    assert [s.id for s in result.steps] == ["double"] * 3
    assert sorted(s.output for s in result.steps) == [0, 2, 4]
    assert result.requests == 5  # plan, three targeted runs, final discovery


async def test_run_drives_sync_functions_and_run_sync_drives_async_ones() -> None:
    d = app()

    @d.function(id="sync-fn", trigger=TriggerEvent("shop/s"))
    def sync_fn(ctx: SyncContext) -> int:
        return ctx.step.run("one", lambda: 1) + 1

    @d.function(id="async-fn", trigger=TriggerEvent("shop/a"))
    async def async_fn(ctx: Context) -> int:
        return await ctx.step.run("one", lambda: 1) + 2

    assert (await run(sync_fn, event={"name": "shop/s"})).output == 2
    # run_sync from inside a running loop still works (it uses a thread of its own).
    assert run_sync(async_fn, event={"name": "shop/a"}).output == 3


def test_run_sync_drives_an_async_function_without_a_running_loop() -> None:
    d = app()

    @d.function(id="pair", trigger=TriggerEvent("shop/pair"))
    async def pair(ctx: Context) -> list[str]:
        return list(
            await ctx.step.parallel(
                lambda: ctx.step.run("a", lambda: "a"), lambda: ctx.step.run("b", lambda: "b")
            )
        )

    result = run_sync(pair)

    assert result.output == ["a", "b"]
    assert result.requests == 4


def test_event_defaults_to_the_first_trigger() -> None:
    d = app()

    @d.function(id="evt", trigger=TriggerEvent("shop/default"))
    def evt(ctx: SyncContext) -> str:
        return ctx.event.name

    @d.function(id="cron", trigger=TriggerCron("0 * * * *"))
    def cron(ctx: SyncContext) -> dict[str, Any]:
        return {"name": ctx.event.name, "data": ctx.event.data}

    assert run_sync(evt).output == "shop/default"
    assert run_sync(cron).output == {
        "name": "inngest/scheduled.timer",
        "data": {"cron": "0 * * * *"},
    }
    result = run_sync(evt, event=Event(name="shop/other", data={"k": 1}), run_id="r-7")
    assert result.output == "shop/other"
    assert result.run_id == "r-7"


def test_a_non_durable_function_is_refused() -> None:
    with pytest.raises(TypeError, match="durable function"):
        run_sync(lambda ctx: None)  # type: ignore[arg-type]


# -- retries and errors ------------------------------------------------------------------------


async def test_step_that_fails_twice_then_succeeds() -> None:
    d = app()
    attempts: list[int] = []

    @d.function(id="flaky", trigger=TriggerEvent("shop/flaky"), retries=3)
    async def flaky(ctx: Context) -> str:
        def call() -> str:
            attempts.append(ctx.attempt)
            if len(attempts) < 3:
                raise ConnectionError(f"down #{len(attempts)}")
            return "up"

        return await ctx.step.run("call", call)

    result = await run(flaky, event={"name": "shop/flaky"})

    assert result.status == "completed"
    assert result.output == "up"
    assert attempts == [0, 1, 2]
    record = result.step("call")
    assert record.op == "StepRun"
    assert record.attempts == 3
    assert [e["message"] for e in record.errors] == ["down #1", "down #2"]
    assert record.errors[0]["name"] == "ConnectionError"


def test_step_that_always_fails_raises_step_error_in_the_function() -> None:
    d = app()
    tries: list[int] = []

    def broken() -> None:
        tries.append(1)
        raise ValueError("card declined")

    @d.function(id="declined", trigger=TriggerEvent("shop/declined"), retries=3)
    def declined(ctx: SyncContext) -> dict[str, str]:
        try:
            ctx.step.run("charge", broken)
        except StepError as err:
            return {"name": err.name, "message": err.message}
        return {"name": "none", "message": ""}

    result = run_sync(declined, event={"name": "shop/declined"})

    assert result.status == "completed"
    assert result.output == {"name": "ValueError", "message": "card declined"}
    assert len(tries) == 4  # retries=3: four attempts
    record = result.step("charge")
    assert (record.op, record.attempts, len(record.errors)) == ("StepFailed", 4, 3)
    assert record.error is not None
    assert record.error["message"] == "card declined"


async def test_non_retriable_error_fails_the_run_at_once() -> None:
    d = app()
    calls: list[int] = []

    @d.function(id="refuse", trigger=TriggerEvent("shop/refuse"), retries=5)
    async def refuse(ctx: Context) -> None:
        calls.append(ctx.attempt)
        raise NonRetriableError("order o1 is cancelled")

    result = await run(refuse, event=ORDER)

    assert result.status == "failed"
    assert result.output is None
    assert result.error is not None
    assert result.error["name"] == "NonRetriableError"
    assert result.error["message"] == "order o1 is cancelled"
    assert result.error["code"] == "non_retriable_error"
    assert calls == [0]
    assert result.requests == 1


async def test_retriable_function_error_uses_every_attempt_then_fails() -> None:
    d = app()
    calls: list[int] = []

    @d.function(id="crash", trigger=TriggerEvent("shop/crash"), retries=2)
    async def crash(ctx: Context) -> None:
        calls.append(ctx.attempt)
        raise KeyError("missing")

    result = await run(crash, event={"name": "shop/crash"})

    assert result.status == "failed"
    assert calls == [0, 1, 2]
    assert result.error is not None
    assert result.error["name"] == "KeyError"


async def test_retry_after_error_is_retried_without_waiting() -> None:
    d = app()
    attempts: list[int] = []

    @d.function(id="later", trigger=TriggerEvent("shop/later"), retries=2)
    async def later(ctx: Context) -> str:
        def reserve() -> str:
            attempts.append(ctx.attempt)
            if ctx.attempt == 0:
                raise RetryAfterError("stock service busy", "1h")
            return "reserved"

        return await ctx.step.run("reserve", reserve)

    result = await asyncio.wait_for(run(later, event={"name": "shop/later"}), timeout=30)

    assert result.status == "completed"
    assert result.output == "reserved"
    assert attempts == [0, 1]


async def test_unserializable_output_fails_for_good() -> None:
    d = app()

    @d.function(id="bad-out", trigger=TriggerEvent("shop/bad"), retries=3)
    async def bad_out(ctx: Context) -> object:
        return object()

    result = await run(bad_out, event={"name": "shop/bad"})

    assert result.status == "failed"
    assert result.error is not None
    assert result.error["code"] == "output_unserializable"
    assert result.requests == 1


def test_on_failure_handler_runs_when_the_function_fails() -> None:
    d = app()

    def alert(ctx: SyncContext) -> str:
        ctx.step.send_event("alert", {"name": "ops/alert", "data": ctx.event.data["error"]})
        return f"alerted about {ctx.event.data['function_id']}"

    @d.function(id="doomed", trigger=TriggerEvent("shop/doomed"), retries=0, on_failure=alert)
    def doomed(ctx: SyncContext) -> None:
        raise RuntimeError("boom")

    result = run_sync(doomed, event={"name": "shop/doomed"})

    assert result.status == "failed"
    assert result.on_failure is not None
    assert result.on_failure.status == "completed"
    assert result.on_failure.output == "alerted about shop-doomed"
    [alerted] = result.on_failure.sent_events
    assert alerted.data["message"] == "boom"


# -- sleeps, waits, signals --------------------------------------------------------------------


async def test_sleeps_are_recorded_not_slept() -> None:
    d = app()
    wake = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)

    @d.function(id="sleepy", trigger=TriggerEvent("shop/sleepy"))
    async def sleepy(ctx: Context) -> str:
        await ctx.step.sleep("nap", "7d")
        await ctx.step.sleep_until("alarm", wake)
        return "awake"

    before = dt.datetime.now(dt.UTC)
    result = await asyncio.wait_for(run(sleepy, event={"name": "shop/sleepy"}), timeout=30)

    assert result.output == "awake"
    assert [s.id for s in result.sleeps] == ["nap", "alarm"]
    nap = result.sleeps[0].until - before  # wake times are stored to the millisecond
    assert dt.timedelta(days=7, seconds=-1) <= nap < dt.timedelta(days=7, hours=1)
    assert result.sleeps[1].until == wake
    assert [(s.id, s.op, s.output) for s in result.steps] == [
        ("nap", "Sleep", None),
        ("alarm", "Sleep", None),
    ]


async def test_wait_matched_and_wait_timed_out() -> None:
    d = app()

    @d.function(id="approve", trigger=TriggerEvent("shop/order"))
    async def approve(ctx: Context) -> dict[str, Any]:
        ok = await ctx.step.wait_for_event(
            "wait-approval",
            event="shop/approved",
            timeout="1d",
            if_="async.data.id == event.data.order_id",
        )
        paid = await ctx.step.wait_for_event("wait-payment", event="shop/paid", timeout="1h")
        nudge = await ctx.step.wait_for_event("wait-nudge", event="shop/nudge", timeout="1h")
        return {
            "approved_by": ok.data["by"] if isinstance(ok, Event) else None,
            "paid": paid is not None,
            "nudge": nudge.name if nudge else None,
        }

    result = await run(
        approve,
        event=ORDER,
        waits={
            "wait-approval": Event(name="shop/approved", data={"id": "o1", "by": "ann"}),
            "wait-payment": None,
            "wait-nudge": {"data": {}},  # the name defaults to the awaited event
        },
    )

    assert result.output == {"approved_by": "ann", "paid": False, "nudge": "shop/nudge"}
    assert result.step("wait-approval").output["data"] == {"id": "o1", "by": "ann"}
    assert result.step("wait-payment").output is None


def test_sync_wait_for_signal_delivered_and_timed_out() -> None:
    d = app()

    @d.function(id="signals", trigger=TriggerEvent("shop/sig"))
    def signals(ctx: SyncContext) -> list[Any]:
        got = ctx.step.wait_for_signal("sig-step", signal="order-o1", timeout="1h")
        lost = ctx.step.wait_for_signal("sig-late", signal="order-o2", timeout="1h")
        assert got is None or isinstance(got, Signal)
        return [got.signal if got else None, got.data if got else None, lost]

    result = run_sync(
        signals,
        event={"name": "shop/sig"},
        signals={"sig-step": {"any": "data"}, "sig-late": None},
    )

    assert result.output == ["order-o1", {"any": "data"}, None]
    assert result.step("sig-step").output == {"signal": "order-o1", "data": {"any": "data"}}


async def test_missing_wait_stub_is_a_clear_error() -> None:
    d = app()

    @d.function(id="no-stub", trigger=TriggerEvent("shop/no-stub"))
    async def no_stub(ctx: Context) -> None:
        await ctx.step.wait_for_event("wait-approval", event="shop/approved", timeout="1h")

    with pytest.raises(HarnessError, match=r"'wait-approval'.*waits=\{'wait-approval'.*None"):
        await run(no_stub, event={"name": "shop/no-stub"})


def test_missing_signal_stub_is_a_clear_error() -> None:
    d = app()

    @d.function(id="no-sig", trigger=TriggerEvent("shop/no-sig"))
    def no_sig(ctx: SyncContext) -> None:
        ctx.step.wait_for_signal("sig-step", signal="s", timeout="1h")

    with pytest.raises(HarnessError, match=r"'sig-step'.*signals=\{'sig-step'"):
        run_sync(no_sig, event={"name": "shop/no-sig"})


def test_wait_stub_for_another_event_or_invalid_is_refused() -> None:
    d = app()

    @d.function(id="wrong", trigger=TriggerEvent("shop/wrong"))
    def wrong(ctx: SyncContext) -> None:
        ctx.step.wait_for_event("w", event="shop/approved", timeout="1h")

    with pytest.raises(HarnessError, match=r"shop/refunded.*shop/approved"):
        run_sync(wrong, waits={"w": {"name": "shop/refunded"}})
    with pytest.raises(HarnessError, match="not a valid event"):
        run_sync(wrong, waits={"w": {"data": "not an object"}})


# -- invoke and send_event ---------------------------------------------------------------------


async def test_invoke_runs_a_sibling_function_as_a_child() -> None:
    d = app()

    @d.function(id="price", trigger=TriggerEvent("shop/price"))
    async def price(ctx: Context) -> int:
        base = await ctx.step.run("base", lambda: 10)
        await ctx.step.send_event(
            "priced", {"name": "shop/priced", "data": {"sku": ctx.event.data["sku"]}}
        )
        return base * ctx.event.data["qty"]

    @d.function(id="cart", trigger=TriggerEvent("shop/cart"))
    async def cart(ctx: Context) -> int:
        total = await ctx.step.invoke("invoke-price", function=price, data={"sku": "x", "qty": 3})
        return total + 1

    result = await run(cart, event={"name": "shop/cart"})

    assert result.status == "completed"
    assert result.output == 31
    record = result.step("invoke-price")
    assert (record.op, record.output, record.stubbed) == ("InvokeFunction", 30, False)
    assert isinstance(record.child, RunResult)
    assert [s.id for s in record.child.steps] == ["base", "priced"]
    assert [e.name for e in result.sent_events] == ["shop/priced"]  # the child's events count


def test_sync_invoke_of_a_failing_child_raises_step_error() -> None:
    d = app()

    @d.function(id="child", trigger=TriggerEvent("shop/child"), retries=0)
    def child(ctx: SyncContext) -> None:
        raise NonRetriableError(f"no such sku {ctx.event.data['sku']}")

    @d.function(id="parent", trigger=TriggerEvent("shop/parent"))
    def parent(ctx: SyncContext) -> str:
        try:
            ctx.step.invoke("invoke-child", function="child", data={"sku": "zz"})
        except StepError as err:
            return f"{err.name}: {err.message}"
        return "no error"

    result = run_sync(parent, event={"name": "shop/parent"})

    assert result.output == "NonRetriableError: no such sku zz"
    record = result.step("invoke-child")
    assert record.child is not None
    assert record.child.status == "failed"


async def test_invoke_stub_replaces_the_child() -> None:
    d = app()
    ran: list[str] = []

    @d.function(id="child", trigger=TriggerEvent("shop/child"))
    async def child(ctx: Context) -> dict[str, int]:
        ran.append("child")
        return {"result": 0}

    @d.function(id="parent", trigger=TriggerEvent("shop/parent"))
    async def parent(ctx: Context) -> list[Any]:
        ok = await ctx.step.invoke("invoke-step", function=child)
        try:
            await ctx.step.invoke("invoke-bad", function=child)
        except StepError as err:
            return [ok, err.message]
        return [ok, None]

    result = await run(
        parent,
        invokes={"invoke-step": {"result": 1}, "invoke-bad": NonRetriableError("child down")},
    )

    assert result.output == [{"result": 1}, "child down"]
    assert ran == []
    assert result.step("invoke-step").stubbed


async def test_invoke_of_a_function_outside_the_app_is_a_clear_error() -> None:
    d = app()

    @d.function(id="caller", trigger=TriggerEvent("shop/caller"))
    async def caller(ctx: Context) -> None:
        await ctx.step.invoke("invoke-elsewhere", function="not-here")

    with pytest.raises(HarnessError, match=r"'invoke-elsewhere'.*shop-not-here.*invokes="):
        await run(caller)


async def test_send_event_is_captured_not_sent() -> None:
    d = Durable("shop", dev=True, orchestrator_url="http://127.0.0.1:9")  # nothing listens

    @d.function(id="notify", trigger=TriggerEvent("shop/order"))
    async def notify(ctx: Context) -> list[str]:
        return await ctx.step.send_event(
            "send",
            [
                {"name": "shop/email", "data": {"to": "ann@example.com"}},
                Event(name="shop/sms", data={"to": "+100"}, id="sms-o1"),
            ],
        )

    result = await run(notify, event=ORDER)

    assert [(e.name, e.data) for e in result.sent_events] == [
        ("shop/email", {"to": "ann@example.com"}),
        ("shop/sms", {"to": "+100"}),
    ]
    assert result.output is not None
    assert len(result.output) == 2
    assert result.output[1] == "sms-o1"  # an event's own id is its id


# -- step stubs --------------------------------------------------------------------------------


async def test_step_stubs_skip_the_handlers() -> None:
    d = app()
    ran: list[str] = []

    def real_charge() -> Receipt:
        ran.append("charge")
        return Receipt(charge_id="real", amount=1)

    def real_label() -> str:
        ran.append("label")
        return "label-1"

    @d.function(id="stubbed", trigger=TriggerEvent("shop/order"))
    async def stubbed(ctx: Context) -> list[Any]:
        receipt = await ctx.step.run("charge", real_charge)
        assert isinstance(receipt, Receipt)
        label = await ctx.step.run("label", real_label)
        try:
            await ctx.step.run("fraud-check", real_label)
        except StepError as err:
            return [receipt.charge_id, label, err.message]
        return [receipt.charge_id, label, None]

    result = await run(
        stubbed,
        event=ORDER,
        steps={
            "charge": {"charge_id": "ch_stub", "amount": 42},
            "fraud-check": NonRetriableError("flagged"),
        },
    )

    assert result.output == ["ch_stub", "label-1", "flagged"]
    assert ran == ["label"]
    assert [(s.id, s.op, s.stubbed) for s in result.steps] == [
        ("charge", "StepRun", True),
        ("label", "StepRun", False),
        ("fraud-check", "StepFailed", True),
    ]


def test_sync_step_stub_for_one_use_of_a_reused_id() -> None:
    d = app()

    @d.function(id="reuse", trigger=TriggerEvent("shop/reuse"))
    def reuse(ctx: SyncContext) -> list[int]:
        return [ctx.step.run("n", lambda: 1) for _ in range(3)]

    result = run_sync(reuse, steps={"n:1": 99})

    assert result.output == [1, 99, 1]


# -- a function that never ends ----------------------------------------------------------------


async def test_max_requests_stops_a_function_that_never_ends() -> None:
    d = app()

    @d.function(id="forever", trigger=TriggerEvent("shop/forever"))
    async def forever(ctx: Context) -> None:
        n = 0
        while True:
            await ctx.step.run("tick", lambda: None)
            n += 1

    with pytest.raises(HarnessError, match=r"'shop-forever'.*20 requests.*max_requests="):
        await run(forever, max_requests=20)


def test_max_requests_is_enough_for_a_function_that_ends() -> None:
    d = app()

    @d.function(id="five", trigger=TriggerEvent("shop/five"))
    def five(ctx: SyncContext) -> int:
        return sum(ctx.step.run("one", lambda: 1) for _ in range(5))

    assert run_sync(five, max_requests=6).output == 5
    with pytest.raises(HarnessError):
        run_sync(five, max_requests=5)


# -- an error that stops the run, raised by a step and caught by the function ------------------


def _refuse() -> None:
    raise NonRetriableError("nope")


def test_sync_non_retriable_step_error_caught_by_the_function_still_fails_the_run() -> None:
    d = app()
    ran: list[str] = []

    @d.function(id="swallow", trigger=TriggerEvent("shop/swallow"))
    def swallow(ctx: SyncContext) -> str:
        with contextlib.suppress(NonRetriableError):
            ctx.step.run("refuse", _refuse)
        return ctx.step.run("after", lambda: ran.append("after") or "after")

    result = run_sync(swallow)

    assert result.status == "failed"
    assert result.error is not None
    assert result.error["message"] == "nope"
    assert ran == []


async def test_async_non_retriable_step_error_caught_by_the_function_still_fails_the_run() -> None:
    d = app()

    @d.function(id="swallow", trigger=TriggerEvent("shop/swallow"))
    async def swallow(ctx: Context) -> str:
        with contextlib.suppress(NonRetriableError):
            await ctx.step.run("refuse", _refuse)
        return await ctx.step.run("after", lambda: "after")

    # A deadline only to turn a hung request into a failure; a working run takes milliseconds.
    try:
        result = await asyncio.wait_for(run(swallow), timeout=5)
    except TimeoutError:
        pytest.fail("the request never ended after the function caught the step's error")

    assert result.status == "failed"
    assert result.error is not None
    assert result.error["message"] == "nope"


# -- step.fetch and step.ai.infer ---------------------------------------------------------------


def test_fetch_and_ai_infer_take_their_answers_from_responses() -> None:
    d = Durable("t", dev=True)

    @d.function(id="f", trigger=TriggerEvent("t/f"))
    def f(ctx: SyncContext) -> list[Any]:
        page = ctx.step.fetch("page", "https://example.com/")
        body = {"model": "m", "messages": []}
        answer = ctx.step.ai.infer("ask", url="https://api.example.com/v1/chat", body=body)
        try:
            ctx.step.fetch("down", "https://example.com/down")
        except StepError as err:
            return [page.status_code, page.text, answer["ok"], err.message]
        return []

    stub = FetchResponse(url="https://example.com/", status_code=200, body="hello")
    down = RuntimeError("unreachable")
    result = run_sync(f, responses={"page": stub, "ask": {"ok": True}, "down": down})
    assert result.status == "completed", result
    assert result.output == [200, "hello", True, "unreachable"]
    assert [s.op for s in result.steps] == ["Gateway", "AIGateway", "Gateway"]


async def test_a_fetch_without_a_response_stub_names_the_argument() -> None:
    d = Durable("t", dev=True)

    @d.function(id="f", trigger=TriggerEvent("t/f"))
    async def f(ctx: Context) -> Any:
        return await ctx.step.fetch("page", "https://example.com/")

    with pytest.raises(HarnessError, match=r"responses=\{'page': \.\.\.\}"):
        await run(f)
