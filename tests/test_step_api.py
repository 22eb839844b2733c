"""The step API as a function sees it: one execution request in, one response out.

Each test defines its function on a fresh app, sends requests the way the orchestrator does
(`steps` holds the memos stored so far) and checks the wire response: 206 with opcodes, 200
with the output, or 500 with the error and its retry headers. Most behaviours are checked
for an async function and its sync twin.
"""

import asyncio
import dataclasses
import datetime as dt
import functools
import hashlib
import logging
from typing import Any

import pydantic
import pytest

from durable_core import (
    Context,
    Durable,
    Event,
    NonRetriableError,
    RetryAfterError,
    Signal,
    StepError,
    SyncContext,
    TriggerEvent,
)
from durable_core._engine import hash_step_id
from durable_core._execute import ExecutionRequest, Wire, execute, to_wire

EVENT = {
    "name": "shop/order.created",
    "data": {"order_id": "o-1", "total": 42},
    "id": "evt-1",
    "ts": 1_700_000_000_000,
}
TRIGGER = TriggerEvent("shop/order.created")
DEADLINE = 5  # seconds; every request here answers in milliseconds

flavours = pytest.mark.parametrize("flavour", ["async", "sync"])


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


@pytest.fixture
def app() -> Durable:
    return Durable("shop", dev=True)


class Sent:
    """Stands in for the event API: records batches, answers with ids."""

    def __init__(self) -> None:
        self.batches: list[list[Event]] = []

    def sync(self, events: list[Event]) -> list[str]:
        self.batches.append(events)
        return [f"id-{len(self.batches)}-{i}" for i in range(len(events))]

    async def __call__(self, events: list[Event]) -> list[str]:
        return self.sync(events)


async def call(
    fn: Any,
    steps: dict[str, Any] | None = None,
    *,
    step_id: str = "step",
    attempt: int = 0,
    max_attempts: int | None = None,
    immediate: bool = True,
    events: list[dict[str, Any]] | None = None,
    run_id: str = "run-1",
    sent: Sent | None = None,
) -> Wire:
    """Send one execution request to `fn` and return its response."""
    found = fn.app.find(fn.id)
    assert found is not None
    body = {
        "event": (events or [EVENT])[0],
        "events": events,
        "steps": steps or {},
        "ctx": {
            "run_id": run_id,
            "attempt": attempt,
            "max_attempts": max_attempts,
            "disable_immediate_execution": not immediate,
            "stack": {"stack": [], "current": 0},
        },
        "use_api": False,
        "version": 2,
    }
    sender = sent or Sent()
    try:
        async with asyncio.timeout(DEADLINE):
            outcome = await execute(
                found[0], found[1], ExecutionRequest.model_validate(body),
                None if step_id == "step" else step_id,
                sender=sender, sync_sender=sender.sync,
            )  # fmt: skip
    except TimeoutError:
        pytest.fail(f"{fn.id}: no response within {DEADLINE} s (stepId={step_id})")
    return to_wire(fn, outcome)


async def finish(
    fn: Any, world: dict[str, Any] | None = None, sent: Sent | None = None
) -> tuple[Wire, list[dict[str, Any]]]:
    """Drive a run to its end like the orchestrator; the last response and every op seen."""
    steps: dict[str, Any] = {}
    seen: list[dict[str, Any]] = []
    planned: list[str] = []
    step_id = "step"
    for _ in range(30):
        wire = await call(fn, steps, step_id=step_id, sent=sent)
        if wire.status != 206:
            return wire, seen
        for op in wire.body:
            seen.append(op)
            if op["op"] == "StepRun":
                steps[op["id"]] = {"data": op["data"]}
            elif op["op"] == "StepPlanned":
                planned.append(op["id"])
            elif op["op"] == "Sleep":
                steps[op["id"]] = None
            elif op["op"] in ("WaitForEvent", "WaitForSignal", "InvokeFunction"):
                steps[op["id"]] = (world or {})[op["userland"]["id"]]
            else:
                raise AssertionError(f"unexpected op {op}")
        step_id = planned.pop(0) if planned else "step"
    raise AssertionError("the run did not finish in 30 requests")


def only_op(wire: Wire) -> dict[str, Any]:
    assert wire.status == 206, wire
    [op] = wire.body
    return op


def assert_fails_for_good(wire: Wire, name: str) -> dict[str, Any]:
    assert wire.status == 500, wire
    assert wire.headers.get("x-inngest-no-retry") == "true", wire.headers
    assert wire.body["name"] == name, wire.body
    return wire.body


# -- step ids ------------------------------------------------------------------------------------


def test_hashed_id_is_the_sha1_of_the_id() -> None:
    assert hash_step_id("charge") == hashlib.sha1(b"charge").hexdigest()
    assert hash_step_id("charge:1") == hashlib.sha1(b"charge:1").hexdigest()


@flavours
async def test_reused_ids_hash_with_a_counter(app: Durable, flavour: str) -> None:
    if flavour == "async":

        @app.function(id="ids", trigger=TRIGGER)
        async def fn(ctx: Context) -> int:
            total = 0
            for n in range(3):
                total += await ctx.step.run("add", lambda n=n: n)
            await ctx.step.run("other", lambda: None)
            total += await ctx.step.run("add", lambda: 10)
            return total

    else:

        @app.function(id="ids", trigger=TRIGGER)
        def fn(ctx: SyncContext) -> int:
            total = 0
            for n in range(3):
                total += ctx.step.run("add", lambda n=n: n)
            ctx.step.run("other", lambda: None)
            total += ctx.step.run("add", lambda: 10)
            return total

    wire, ops = await finish(fn)

    assert wire.body == 13
    assert [(op["id"], op["userland"]["id"], op["userland"]["index"]) for op in ops] == [
        (sha1("add"), "add", None),
        (sha1("add:1"), "add", 1),
        (sha1("add:2"), "add", 2),
        (sha1("other"), "other", None),
        (sha1("add:3"), "add", 3),
    ]
    assert {op["name"] for op in ops if op["userland"]["id"] == "add"} == {"add"}


# -- nesting -------------------------------------------------------------------------------------


@flavours
async def test_a_step_inside_a_step_fails_the_run(app: Durable, flavour: str) -> None:
    ran: list[str] = []
    if flavour == "async":

        @app.function(id="nested", trigger=TRIGGER)
        async def fn(ctx: Context) -> None:
            async def outer() -> int:
                return await ctx.step.run("inner", lambda: ran.append("inner") or 1)

            await ctx.step.run("outer", outer)

    else:

        @app.function(id="nested", trigger=TRIGGER)
        def fn(ctx: SyncContext) -> None:
            def outer() -> int:
                return ctx.step.run("inner", lambda: ran.append("inner") or 1)

            ctx.step.run("outer", outer)

    body = assert_fails_for_good(await call(fn), "NestedStepError")

    assert body["code"] == "step_nested"
    assert "'inner'" in body["message"]
    assert "'outer'" in body["message"]
    assert ran == []


@flavours
async def test_a_nested_step_fails_the_run_even_if_the_handler_catches_it(
    app: Durable, flavour: str
) -> None:
    # The outer step must not be stored as a success built on a swallowed NestedStepError.
    if flavour == "async":

        @app.function(id="nested-caught", trigger=TRIGGER)
        async def fn(ctx: Context) -> str:
            async def outer() -> str:
                try:
                    await ctx.step.run("inner", lambda: 1)
                except Exception as err:
                    return f"carried on after {type(err).__name__}"
                return "inner ran"

            return await ctx.step.run("outer", outer)

    else:

        @app.function(id="nested-caught", trigger=TRIGGER)
        def fn(ctx: SyncContext) -> str:
            def outer() -> str:
                try:
                    ctx.step.run("inner", lambda: 1)
                except Exception as err:
                    return f"carried on after {type(err).__name__}"
                return "inner ran"

            return ctx.step.run("outer", outer)

    body = assert_fails_for_good(await call(fn), "NestedStepError")
    assert "'inner'" in body["message"]
    assert "'outer'" in body["message"]


# -- control flow cannot be swallowed ------------------------------------------------------------


def _raise_value_error() -> None:
    raise ValueError("boom")


@flavours
async def test_except_exception_does_not_swallow_the_end_of_a_request(
    app: Durable, flavour: str
) -> None:
    if flavour == "async":

        @app.function(id="guarded", trigger=TRIGGER)
        async def fn(ctx: Context) -> str:
            try:
                await ctx.step.run("a", lambda: "a")
            except Exception:
                return "swallowed the run step"
            try:
                await ctx.step.sleep("nap", "1h")
            except Exception:
                return "swallowed the sleep"
            try:
                await ctx.step.run("b", _raise_value_error)
            except Exception:
                return "swallowed the failing step"
            return "done"

    else:

        @app.function(id="guarded", trigger=TRIGGER)
        def fn(ctx: SyncContext) -> str:
            try:
                ctx.step.run("a", lambda: "a")
            except Exception:
                return "swallowed the run step"
            try:
                ctx.step.sleep("nap", "1h")
            except Exception:
                return "swallowed the sleep"
            try:
                ctx.step.run("b", _raise_value_error)
            except Exception:
                return "swallowed the failing step"
            return "done"

    assert only_op(await call(fn))["op"] == "StepRun"
    assert only_op(await call(fn, immediate=False))["op"] == "StepPlanned"
    memo_a = {sha1("a"): {"data": "a"}}
    assert only_op(await call(fn, memo_a))["op"] == "Sleep"
    slept = {**memo_a, sha1("nap"): None}
    failed = only_op(await call(fn, slept, max_attempts=3))
    assert failed["op"] == "StepError"
    assert failed["error"]["message"] == "boom"


# -- memoized errors -----------------------------------------------------------------------------

FAILED_MEMO = {"error": {"name": "ValueError", "message": "card declined", "stack": "ValueError"}}


@flavours
async def test_memoized_error_is_raised_as_a_catchable_step_error(
    app: Durable, flavour: str
) -> None:
    ran: list[str] = []

    def charge() -> str:
        ran.append("charge")
        return "charged"

    if flavour == "async":

        @app.function(id="caught", trigger=TRIGGER)
        async def fn(ctx: Context) -> dict[str, Any]:
            try:
                await ctx.step.run("charge", charge)
            except Exception as err:
                assert isinstance(err, StepError)
                return {"name": err.name, "message": err.message, "stack": err.stack}
            return {}

    else:

        @app.function(id="caught", trigger=TRIGGER)
        def fn(ctx: SyncContext) -> dict[str, Any]:
            try:
                ctx.step.run("charge", charge)
            except Exception as err:
                assert isinstance(err, StepError)
                return {"name": err.name, "message": err.message, "stack": err.stack}
            return {}

    wire = await call(fn, {sha1("charge"): FAILED_MEMO})

    assert (wire.status, wire.body) == (
        200,
        {"name": "ValueError", "message": "card declined", "stack": "ValueError"},
    )
    assert ran == []


@flavours
async def test_uncaught_memoized_error_fails_the_run_with_the_original_name(
    app: Durable, flavour: str
) -> None:
    if flavour == "async":

        @app.function(id="uncaught", trigger=TRIGGER)
        async def fn(ctx: Context) -> None:
            await ctx.step.run("charge", lambda: "charged")

    else:

        @app.function(id="uncaught", trigger=TRIGGER)
        def fn(ctx: SyncContext) -> None:
            ctx.step.run("charge", lambda: "charged")

    body = assert_fails_for_good(await call(fn, {sha1("charge"): FAILED_MEMO}), "ValueError")
    assert body["message"] == "card declined"


# -- typed outputs -------------------------------------------------------------------------------


class Item(pydantic.BaseModel):
    sku: str
    qty: int


@dataclasses.dataclass
class Receipt:
    number: str
    amount: float


def make_item() -> Item:
    return Item(sku="apple", qty=2)


def make_receipt() -> Receipt:
    return Receipt(number="r-1", amount=9.5)


def make_items() -> list[Item]:
    return [Item(sku="apple", qty=1), Item(sku="pear", qty=3)]


def scale(item: Item, factor: int) -> Item:
    return Item(sku=item.sku, qty=item.qty * factor)


def untyped():  # no return annotation: the output stays plain JSON
    return {"sku": "plum", "qty": 1}


async def make_item_async() -> Item:
    await asyncio.sleep(0)
    return Item(sku="fig", qty=5)


def _describe(values: dict[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in values.items():
        if isinstance(value, list):
            out[key] = "list[" + ",".join(type(v).__name__ for v in value) + "]"
        else:
            out[key] = type(value).__name__
    return out


TYPED = {
    "model": "Item",
    "dataclass": "Receipt",
    "list": "list[Item,Item]",
    "partial": "Item",
    "output_type": "Item",
    "untyped": "dict",
}


@flavours
async def test_step_outputs_come_back_as_their_declared_type(app: Durable, flavour: str) -> None:
    apple = Item(sku="apple", qty=1)
    if flavour == "async":

        @app.function(id="typed", trigger=TRIGGER)
        async def fn(ctx: Context) -> dict[str, str]:
            values = {
                "model": await ctx.step.run("model", make_item),
                "dataclass": await ctx.step.run("dataclass", make_receipt),
                "list": await ctx.step.run("list", make_items),
                "partial": await ctx.step.run("partial", functools.partial(scale, factor=3), apple),
                "output_type": await ctx.step.run("output_type", untyped, output_type=Item),
                "untyped": await ctx.step.run("untyped", untyped),
            }
            return _describe(values)

    else:

        @app.function(id="typed", trigger=TRIGGER)
        def fn(ctx: SyncContext) -> dict[str, str]:
            values = {
                "model": ctx.step.run("model", make_item),
                "dataclass": ctx.step.run("dataclass", make_receipt),
                "list": ctx.step.run("list", make_items),
                "partial": ctx.step.run("partial", functools.partial(scale, factor=3), apple),
                "output_type": ctx.step.run("output_type", untyped, output_type=Item),
                "untyped": ctx.step.run("untyped", untyped),
            }
            return _describe(values)

    wire, ops = await finish(fn)

    assert wire.body == TYPED
    stored = {op["userland"]["id"]: op["data"] for op in ops}
    assert stored["model"] == {"sku": "apple", "qty": 2}
    assert stored["dataclass"] == {"number": "r-1", "amount": 9.5}
    assert stored["list"] == [{"sku": "apple", "qty": 1}, {"sku": "pear", "qty": 3}]
    assert stored["partial"] == {"sku": "apple", "qty": 3}


async def test_async_handler_output_is_typed_from_its_annotation(app: Durable) -> None:
    @app.function(id="typed-async", trigger=TRIGGER)
    async def fn(ctx: Context) -> str:
        item = await ctx.step.run("fig", make_item_async)
        return f"{type(item).__name__} {item.sku} x{item.qty}"

    wire, _ = await finish(fn)
    assert wire.body == "Item fig x5"


async def test_stored_output_that_no_longer_fits_its_type_fails_clearly(app: Durable) -> None:
    @app.function(id="typed-changed", trigger=TRIGGER)
    async def fn(ctx: Context) -> None:
        await ctx.step.run("model", make_item)

    body = assert_fails_for_good(
        await call(fn, {sha1("model"): {"data": {"name": "apple"}}}), "SerializationError"
    )
    assert "'model'" in body["message"]
    assert "Item" in body["message"]


# -- values that are not JSON --------------------------------------------------------------------


class FakeSocket:
    def __init__(self) -> None:
        self.fd = 3


@flavours
async def test_a_step_output_that_is_not_json_fails_the_run(app: Durable, flavour: str) -> None:
    if flavour == "async":

        @app.function(id="unstorable", trigger=TRIGGER)
        async def fn(ctx: Context) -> None:
            await ctx.step.run("connect", FakeSocket)

    else:

        @app.function(id="unstorable", trigger=TRIGGER)
        def fn(ctx: SyncContext) -> None:
            ctx.step.run("connect", FakeSocket)

    body = assert_fails_for_good(await call(fn), "SerializationError")
    assert "step 'connect'" in body["message"]
    assert "FakeSocket" in body["message"]


@flavours
async def test_a_function_output_that_is_not_json_fails_the_run(app: Durable, flavour: str) -> None:
    if flavour == "async":

        @app.function(id="bad-output", trigger=TRIGGER)
        async def fn(ctx: Context) -> object:
            return object()

    else:

        @app.function(id="bad-output", trigger=TRIGGER)
        def fn(ctx: SyncContext) -> object:
            return object()

    body = assert_fails_for_good(await call(fn), "SerializationError")
    assert "function 'bad-output'" in body["message"]
    assert "object" in body["message"]


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), {"price": float("nan")}],
    ids=["nan", "inf", "nested-nan"],
)
async def test_not_a_number_is_not_json(app: Durable, value: object) -> None:
    # JSON has no NaN or Infinity: a strict JSON parser rejects the response body.
    @app.function(id="nan-step", trigger=TRIGGER)
    async def step_fn(ctx: Context) -> None:
        await ctx.step.run("price", lambda: value)

    @app.function(id="nan-output", trigger=TRIGGER)
    async def output_fn(ctx: Context) -> object:
        return value

    assert (
        "step 'price'"
        in assert_fails_for_good(await call(step_fn), "SerializationError")["message"]
    )
    assert (
        "function 'nan-output'"
        in assert_fails_for_good(await call(output_fn), "SerializationError")["message"]
    )


# -- sync and async handlers ---------------------------------------------------------------------


async def test_sync_and_async_handlers_in_an_async_function(app: Durable) -> None:
    async def slow_double(n: int) -> int:
        await asyncio.sleep(0)
        return n * 2

    @app.function(id="mixed", trigger=TRIGGER)
    async def fn(ctx: Context) -> list[int]:
        a = await ctx.step.run("sync", lambda: 1)
        b = await ctx.step.run("async", slow_double, 21)
        return [a, b]

    wire, ops = await finish(fn)
    assert wire.body == [1, 42]
    assert [op["data"] for op in ops] == [1, 42]


async def test_an_async_handler_in_a_sync_function_fails_clearly(app: Durable) -> None:
    async def lookup() -> int:
        return 1

    @app.function(id="sync-with-async-step", trigger=TRIGGER)
    def fn(ctx: SyncContext) -> int:
        return ctx.step.run("lookup", lookup)

    body = assert_fails_for_good(await call(fn), "NonRetriableError")
    assert "'lookup'" in body["message"]
    assert "async def" in body["message"]


# -- durations and op options --------------------------------------------------------------------


def _wake(op: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(op["name"])


@flavours
@pytest.mark.parametrize(
    ("duration", "delta"),
    [
        ("24h", dt.timedelta(hours=24)),
        (dt.timedelta(minutes=5), dt.timedelta(minutes=5)),
        (30, dt.timedelta(seconds=30)),
        ("1h30m", dt.timedelta(minutes=90)),
    ],
    ids=["24h", "timedelta", "seconds", "1h30m"],
)
async def test_sleep_op_names_the_wake_time(
    app: Durable, flavour: str, duration: Any, delta: dt.timedelta
) -> None:
    if flavour == "async":

        @app.function(id="nap", trigger=TRIGGER)
        async def fn(ctx: Context) -> str:
            await ctx.step.sleep("nap", duration)
            return "awake"

    else:

        @app.function(id="nap", trigger=TRIGGER)
        def fn(ctx: SyncContext) -> str:
            ctx.step.sleep("nap", duration)
            return "awake"

    before = dt.datetime.now(dt.UTC)
    op = only_op(await call(fn))
    after = dt.datetime.now(dt.UTC)

    assert (op["op"], op["id"], op["displayName"]) == ("Sleep", sha1("nap"), "nap")
    assert op["name"].endswith("Z")
    assert before - dt.timedelta(milliseconds=1) <= _wake(op) - delta <= after
    assert (await call(fn, {sha1("nap"): None})).body == "awake"


@flavours
async def test_sleep_until_names_the_wake_time_in_utc(app: Durable, flavour: str) -> None:
    paris_winter = dt.timezone(dt.timedelta(hours=1))
    until = dt.datetime(2030, 1, 2, 4, 4, 5, 250_000, tzinfo=paris_winter)
    if flavour == "async":

        @app.function(id="until", trigger=TRIGGER)
        async def fn(ctx: Context) -> None:
            await ctx.step.sleep_until("until", until)

    else:

        @app.function(id="until", trigger=TRIGGER)
        def fn(ctx: SyncContext) -> None:
            ctx.step.sleep_until("until", until)

    op = only_op(await call(fn))
    assert (op["op"], op["name"]) == ("Sleep", "2030-01-02T03:04:05.250Z")


@flavours
async def test_wait_for_event_op_and_result(app: Durable, flavour: str) -> None:
    if flavour == "async":

        @app.function(id="wait", trigger=TRIGGER)
        async def fn(ctx: Context) -> Any:
            paid = await ctx.step.wait_for_event(
                "paid", event="shop/paid", if_="async.data.order_id == event.data.order_id",
                timeout="1h",
            )  # fmt: skip
            late = await ctx.step.wait_for_event("late", event="shop/late", timeout=5400)
            return [paid.data if paid else None, type(paid).__name__, late]

    else:

        @app.function(id="wait", trigger=TRIGGER)
        def fn(ctx: SyncContext) -> Any:
            paid = ctx.step.wait_for_event(
                "paid", event="shop/paid", if_="async.data.order_id == event.data.order_id",
                timeout="1h",
            )  # fmt: skip
            late = ctx.step.wait_for_event("late", event="shop/late", timeout=5400)
            return [paid.data if paid else None, type(paid).__name__, late]

    op = only_op(await call(fn))
    assert (op["op"], op["name"], op["displayName"]) == ("WaitForEvent", "shop/paid", "paid")
    assert op["opts"] == {"if": "async.data.order_id == event.data.order_id", "timeout": "1h"}

    paid = {"name": "shop/paid", "data": {"order_id": "o-1"}, "id": "e2", "ts": 1}
    op = only_op(await call(fn, {sha1("paid"): paid}))
    assert op["opts"] == {"if": None, "timeout": "90m"}

    wire = await call(fn, {sha1("paid"): paid, sha1("late"): None})
    assert wire.body == [{"order_id": "o-1"}, "Event", None]


@flavours
async def test_wait_for_signal_op_and_timeout(app: Durable, flavour: str) -> None:
    if flavour == "async":

        @app.function(id="signal", trigger=TRIGGER)
        async def fn(ctx: Context) -> Any:
            got = await ctx.step.wait_for_signal(
                "approval", signal="approve-o-1", timeout=dt.timedelta(days=2), on_conflict="fail"
            )
            return got is None

    else:

        @app.function(id="signal", trigger=TRIGGER)
        def fn(ctx: SyncContext) -> Any:
            got = ctx.step.wait_for_signal(
                "approval", signal="approve-o-1", timeout=dt.timedelta(days=2), on_conflict="fail"
            )
            return got is None

    op = only_op(await call(fn))
    assert (op["op"], op["id"], op["name"]) == ("WaitForSignal", sha1("approval"), "approval")
    assert op["opts"] == {"signal": "approve-o-1", "timeout": "2d", "conflict": "fail"}
    assert (await call(fn, {sha1("approval"): None})).body is True


async def test_wait_for_signal_returns_the_signal(app: Durable) -> None:
    @app.function(id="signal-data", trigger=TRIGGER)
    async def fn(ctx: Context) -> Any:
        got = await ctx.step.wait_for_signal("approval", signal="approve", timeout="1h")
        assert isinstance(got, Signal)
        return [got.signal, got.data]

    memo = {"signal": "approve", "data": {"by": "ada"}}
    wire = await call(fn, {sha1("approval"): memo})
    assert wire.body == ["approve", {"by": "ada"}]


@flavours
async def test_invoke_op_and_result(app: Durable, flavour: str) -> None:
    @app.function(id="make-label", trigger=TriggerEvent("shop/label"))
    async def make_label(ctx: Context) -> Item:
        return Item(sku="label", qty=1)

    if flavour == "async":

        @app.function(id="invoker", trigger=TRIGGER)
        async def fn(ctx: Context) -> Any:
            label = await ctx.step.invoke("label", function=make_label, data={"order": "o-1"})
            other = await ctx.step.invoke("other", function="audit", timeout="10m")
            return [type(label).__name__, label.sku, other]

    else:

        @app.function(id="invoker", trigger=TRIGGER)
        def fn(ctx: SyncContext) -> Any:
            label = ctx.step.invoke("label", function=make_label, data={"order": "o-1"})
            other = ctx.step.invoke("other", function="audit", timeout="10m")
            return [type(label).__name__, label.sku, other]

    op = only_op(await call(fn))
    assert (op["op"], op["name"]) == ("InvokeFunction", "label")
    assert op["opts"]["function_id"] == "shop-make-label"
    assert op["opts"]["payload"]["data"] == {"order": "o-1"}

    stored = {sha1("label"): {"data": {"sku": "label", "qty": 1}}}
    op = only_op(await call(fn, stored))
    assert op["opts"]["function_id"] == "shop-audit"
    assert op["opts"]["payload"]["data"] is None  # as the inngest SDK sends it
    assert op["opts"]["timeout"] == "10m"

    wire = await call(fn, {**stored, sha1("other"): {"data": "ok"}})
    assert wire.body == ["Item", "label", "ok"]

    failed = {sha1("label"): {"error": {"name": "TimeoutError", "message": "child timed out"}}}
    body = assert_fails_for_good(await call(fn, failed), "TimeoutError")
    assert body["message"] == "child timed out"


# -- logging -------------------------------------------------------------------------------------


@flavours
async def test_logger_is_quiet_while_replaying(
    app: Durable, flavour: str, caplog: pytest.LogCaptureFixture
) -> None:
    if flavour == "async":

        @app.function(id="logs", trigger=TRIGGER)
        async def fn(ctx: Context) -> None:
            ctx.logger.info("started")
            await ctx.step.run("a", lambda: 1)
            ctx.logger.info("after a")
            await ctx.step.run("b", lambda: 2)
            ctx.logger.info("after b")
            await ctx.step.run("c", lambda: ctx.logger.info("inside c"))

    else:

        @app.function(id="logs", trigger=TRIGGER)
        def fn(ctx: SyncContext) -> None:
            ctx.logger.info("started")
            ctx.step.run("a", lambda: 1)
            ctx.logger.info("after a")
            ctx.step.run("b", lambda: 2)
            ctx.logger.info("after b")
            ctx.step.run("c", lambda: ctx.logger.info("inside c"))

    caplog.set_level(logging.INFO, logger="durable")

    await call(fn)
    assert [r.getMessage() for r in caplog.records] == ["started"]

    caplog.clear()
    op = only_op(await call(fn, {sha1("a"): {"data": 1}, sha1("b"): {"data": 2}}))
    assert op["userland"]["id"] == "c"
    assert [r.getMessage() for r in caplog.records] == ["after b", "inside c"]


# -- handler arguments ---------------------------------------------------------------------------


def add(a: int, b: int) -> int:
    return a + b


def greet(name: str, *, greeting: str) -> str:
    return f"{greeting}, {name}"


@flavours
async def test_step_run_passes_args_partials_and_closures(app: Durable, flavour: str) -> None:
    if flavour == "async":

        @app.function(id="args", trigger=TRIGGER)
        async def fn(ctx: Context) -> list[Any]:
            total = await ctx.step.run("add", add, 1, 2)
            hello = await ctx.step.run("greet", functools.partial(greet, greeting="Hello"), "Ada")
            order = await ctx.step.run("order", lambda: ctx.event.data["order_id"])
            return [total, hello, order]

    else:

        @app.function(id="args", trigger=TRIGGER)
        def fn(ctx: SyncContext) -> list[Any]:
            total = ctx.step.run("add", add, 1, 2)
            hello = ctx.step.run("greet", functools.partial(greet, greeting="Hello"), "Ada")
            order = ctx.step.run("order", lambda: ctx.event.data["order_id"])
            return [total, hello, order]

    wire, _ = await finish(fn)
    assert wire.body == [3, "Hello, Ada", "o-1"]


# -- retries -------------------------------------------------------------------------------------


@flavours
@pytest.mark.parametrize("from_request", [True, False], ids=["ctx-max-attempts", "fn-retries"])
async def test_retry_budget_per_step(app: Durable, flavour: str, from_request: bool) -> None:
    def flaky() -> None:
        raise ConnectionError("gateway down")

    if flavour == "async":

        @app.function(id="flaky", trigger=TRIGGER, retries=2)
        async def fn(ctx: Context) -> None:
            await ctx.step.run("charge", flaky)

    else:

        @app.function(id="flaky", trigger=TRIGGER, retries=2)
        def fn(ctx: SyncContext) -> None:
            ctx.step.run("charge", flaky)

    ops = [
        only_op(await call(fn, attempt=n, max_attempts=3 if from_request else None))
        for n in range(3)
    ]

    assert [op["op"] for op in ops] == ["StepError", "StepError", "StepFailed"]
    for op in ops:
        assert op["id"] == sha1("charge")
        assert op["error"]["name"] == "ConnectionError"
        assert op["error"]["message"] == "gateway down"
        assert "flaky" in op["error"]["stack"]


@flavours
async def test_non_retriable_error_in_a_step_fails_the_run(app: Durable, flavour: str) -> None:
    def refuse() -> None:
        raise NonRetriableError("customer blocked")

    if flavour == "async":

        @app.function(id="refuse", trigger=TRIGGER)
        async def fn(ctx: Context) -> None:
            await ctx.step.run("charge", refuse)

    else:

        @app.function(id="refuse", trigger=TRIGGER)
        def fn(ctx: SyncContext) -> None:
            ctx.step.run("charge", refuse)

    body = assert_fails_for_good(await call(fn, max_attempts=5), "NonRetriableError")
    assert body["message"] == "customer blocked"
    assert body["code"] == "non_retriable_error"


@flavours
async def test_retry_after_error_in_a_step_sets_retry_after(app: Durable, flavour: str) -> None:
    def rate_limited() -> None:
        raise RetryAfterError("slow down", "30s")

    if flavour == "async":

        @app.function(id="later", trigger=TRIGGER)
        async def fn(ctx: Context) -> None:
            await ctx.step.run("charge", rate_limited)

    else:

        @app.function(id="later", trigger=TRIGGER)
        def fn(ctx: SyncContext) -> None:
            ctx.step.run("charge", rate_limited)

    before = dt.datetime.now(dt.UTC)
    wire = await call(fn)
    after = dt.datetime.now(dt.UTC)

    assert wire.status == 500
    assert "x-inngest-no-retry" not in wire.headers
    assert (wire.body["name"], wire.body["message"]) == ("RetryAfterError", "slow down")
    retry_at = dt.datetime.fromisoformat(wire.headers["retry-after"])
    margin = dt.timedelta(milliseconds=1)
    assert (
        before + dt.timedelta(seconds=30) - margin <= retry_at <= after + dt.timedelta(seconds=30)
    )


def _refuse() -> None:
    raise NonRetriableError("customer blocked")


def _slow_down() -> None:
    raise RetryAfterError("slow down", "30s")


RUN_LEVEL = {
    "NonRetriableError": (_refuse, True),
    "RetryAfterError": (_slow_down, False),
    "SerializationError": (FakeSocket, True),
}


@flavours
@pytest.mark.parametrize("error", list(RUN_LEVEL))
async def test_run_level_errors_from_a_step_end_the_request_even_if_caught(
    app: Durable, flavour: str, error: str
) -> None:
    handler, no_retry = RUN_LEVEL[error]
    if flavour == "async":

        @app.function(id="caught-run-error", trigger=TRIGGER)
        async def fn(ctx: Context) -> str:
            try:
                await ctx.step.run("charge", handler)
            except Exception:
                return "carried on"
            return "done"

    else:

        @app.function(id="caught-run-error", trigger=TRIGGER)
        def fn(ctx: SyncContext) -> str:
            try:
                ctx.step.run("charge", handler)
            except Exception:
                return "carried on"
            return "done"

    wire = await call(fn)

    assert wire.status == 500, wire
    assert wire.body["name"] == error
    assert (wire.headers.get("x-inngest-no-retry") == "true") is no_retry


# -- parallel ------------------------------------------------------------------------------------


async def test_gather_with_one_branch_stored_runs_the_other_at_once(app: Durable) -> None:
    ran: list[str] = []

    def branch(name: str) -> str:
        ran.append(name)
        return name

    @app.function(id="gather", trigger=TRIGGER)
    async def fn(ctx: Context) -> list[str]:
        return list(
            await asyncio.gather(ctx.step.run("a", branch, "a"), ctx.step.run("b", branch, "b"))
        )

    stored = {sha1("a"): {"data": "a"}}

    op = only_op(await call(fn, stored))
    assert (op["op"], op["userland"]["id"], op["data"]) == ("StepRun", "b", "b")
    assert ran == ["b"]

    ran.clear()
    op = only_op(await call(fn, stored, immediate=False))
    assert (op["op"], op["userland"]["id"]) == ("StepPlanned", "b")
    assert ran == []

    wire = await call(fn, {**stored, sha1("b"): {"data": "b"}})
    assert (wire.status, wire.body, ran) == (200, ["a", "b"], [])


# -- the context ---------------------------------------------------------------------------------


@flavours
async def test_context_exposes_the_run(app: Durable, flavour: str) -> None:
    if flavour == "async":

        @app.function(id="ctx", trigger=TRIGGER)
        async def fn(ctx: Context) -> dict[str, Any]:
            return {
                "event": ctx.event.data,
                "events": [e.id for e in ctx.events],
                "run_id": ctx.run_id,
                "attempt": ctx.attempt,
                "fn_id": ctx.fn_id,
            }

    else:

        @app.function(id="ctx", trigger=TRIGGER)
        def fn(ctx: SyncContext) -> dict[str, Any]:
            return {
                "event": ctx.event.data,
                "events": [e.id for e in ctx.events],
                "run_id": ctx.run_id,
                "attempt": ctx.attempt,
                "fn_id": ctx.fn_id,
            }

    second = {**EVENT, "id": "evt-2", "data": {"order_id": "o-2", "total": 7}}
    wire = await call(fn, events=[EVENT, second], run_id="run-42", attempt=2)
    assert wire.body == {
        "event": {"order_id": "o-1", "total": 42},
        "events": ["evt-1", "evt-2"],
        "run_id": "run-42",
        "attempt": 2,
        "fn_id": "shop-ctx",
    }

    alone = await call(fn)
    assert alone.body["events"] == ["evt-1"]


@flavours
async def test_send_event_is_a_step(app: Durable, flavour: str) -> None:
    if flavour == "async":

        @app.function(id="send", trigger=TRIGGER)
        async def fn(ctx: Context) -> list[str]:
            return await ctx.step.send_event("notify", {"name": "shop/notified", "data": {"n": 1}})

    else:

        @app.function(id="send", trigger=TRIGGER)
        def fn(ctx: SyncContext) -> list[str]:
            return ctx.step.send_event("notify", {"name": "shop/notified", "data": {"n": 1}})

    sent = Sent()
    op = only_op(await call(fn, sent=sent))
    assert (op["op"], op["id"], op["data"]) == ("StepRun", sha1("notify"), ["id-1-0"])
    assert [[e.name for e in batch] for batch in sent.batches] == [["shop/notified"]]

    wire = await call(fn, {sha1("notify"): {"data": ["id-1-0"]}}, sent=sent)
    assert wire.body == ["id-1-0"]
    assert len(sent.batches) == 1


# -- step.ai.infer and step.fetch ------------------------------------------------------------------


async def test_ai_infer_and_fetch_answer_with_the_ops_other_sdks_send(app: Durable) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

    @app.function(id="f", trigger=TriggerEvent("shop/order"))
    async def f(ctx: Context) -> list[Any]:
        answer = await ctx.step.ai.infer(
            "ask", url="https://api.example.com/v1/chat/completions", body=body, auth_key="k"
        )
        page = await ctx.step.fetch("page", "https://example.com/a", method="post", body="x")
        return [answer["ok"], page.status_code, page.text, page.ok]

    ask = only_op(await call(f))
    assert ask["op"] == "AIGateway" and ask["id"] == sha1("ask"), ask
    assert ask["opts"] == {
        "type": "step.ai.infer",
        "url": "https://api.example.com/v1/chat/completions",
        "headers": {},
        "auth_key": "k",
        "format": "openai-chat",
        "body": body,
    }
    steps: dict[str, Any] = {sha1("ask"): {"data": {"ok": True}}}
    fetch = only_op(await call(f, steps))
    assert fetch["op"] == "Gateway", fetch
    assert fetch["opts"] == {
        "url": "https://example.com/a", "method": "POST", "headers": {}, "body": "x"
    }  # fmt: skip
    page = {"url": "https://example.com/a", "status_code": 404, "headers": {}, "body": "no"}
    steps[sha1("page")] = {"data": page}
    wire = await call(f, steps)
    assert wire.status == 200, wire
    assert wire.body == [True, 404, "no", False]
    steps[sha1("page")] = {"error": {"name": "GatewayError", "message": "gave up"}}
    wire = await call(f, steps)
    assert wire.status == 500 and wire.body["message"] == "gave up", wire.body


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"url": "ftp://x/y"}, "not an http"),
        ({"url": "https://x/y", "method": "BREW"}, "method must be one of"),
        ({"url": "https://x/y", "headers": {"a": 1}}, "headers must map strings"),
        ({"url": "https://x/y", "body": "a", "json": {"b": 1}}, "body= or json="),
    ],
)
async def test_a_fetch_that_cannot_work_fails_the_run_at_once(
    app: Durable, kwargs: dict[str, Any], problem: str
) -> None:
    @app.function(id="f", trigger=TriggerEvent("shop/order"))
    async def f(ctx: Context) -> Any:
        url = kwargs.pop("url")
        return await ctx.step.fetch("page", url, **kwargs)

    error = assert_fails_for_good(await call(f), "InvalidStepError")
    assert problem in error["message"], error
