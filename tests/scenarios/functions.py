"""The scenario functions, each written once as an async and once as a sync function.

`register(durable)` declares every event-triggered function on an app: the function of
scenario `s` in mode `m` has the id `s-m` and runs on the event `scn/s.m`. Route workflows
(`workflow_async`, `workflow_sync`) are routed by each framework's app builder.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import threading
from collections.abc import Callable
from typing import Any

import pydantic

from durable_core import Context, Durable, NonRetriableError, SyncContext, TriggerEvent
from durable_core.routes import SyncWorkflowContext, WorkflowContext

MODES = ["async", "sync"]
SHORT = "150ms"  # sleeps and wait timeouts: long enough to be a real timer, short for the suite
WAIT_LONG = "30s"
APPROVAL_EVENT = "scn/approval"
NEVER_EVENT = "scn/never-sent"
NOTIFY_EVENT = "scn/workflow.done"
WORKFLOW_PATHS = {"async": "/wf/async", "sync": "/wf/sync"}


def event_name(scenario: str, mode: str) -> str:
    return f"scn/{scenario}.{mode}"


def function_id(scenario: str, mode: str) -> str:
    return f"{scenario}-{mode}"


# -- step handlers, shared by both modes ----------------------------------------------------


def double(n: int) -> int:
    return n * 2


async def increment(n: int) -> int:
    await asyncio.sleep(0)
    return n + 1


def increment_sync(n: int) -> int:
    return n + 1


def add(a: int, b: int) -> int:
    return a + b


def total(values: list[int]) -> int:
    return sum(values)


def label(n: int, s: str) -> str:
    return f"{n}:{s}"


def join(a: str, b: str, *, sep: str) -> str:
    return f"{a}{sep}{b}"


class Price(pydantic.BaseModel):
    amount: int
    currency: str


@dataclasses.dataclass
class Basket:
    items: list[str]
    qty: int


async def quote() -> Price:
    return Price(amount=7, currency="EUR")


def quote_sync() -> Price:
    return Price(amount=7, currency="EUR")


def make_basket() -> Basket:
    return Basket(items=["tea", "cake"], qty=3)


class Attempts:
    """How many times something keyed ran (steps and endpoints run in server threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()

    def hit(self, key: str) -> int:
        with self._lock:
            self._counts[key] += 1
            return self._counts[key]

    def __getitem__(self, key: str) -> int:
        with self._lock:
            return self._counts[key]


FLAKY_STEPS = Attempts()
FLAKY_ENDPOINT = Attempts()


def flaky(key: str) -> str:
    """Fails the first time it runs for `key`, succeeds after."""
    n = FLAKY_STEPS.hit(key)
    if n == 1:
        raise RuntimeError(f"first try for {key} fails")
    return f"ok after {n} tries"


def refuse(tag: str) -> None:
    raise NonRetriableError(f"order {tag} cannot be processed")


def flaky_endpoint(key: str, body: Any) -> tuple[int, dict[str, Any]]:
    """The test apps' /scn/flaky/<key>: HTTP 500 on the first call for `key`, then 200."""
    n = FLAKY_ENDPOINT.hit(key)
    if n == 1:
        return 500, {"error": "try again"}
    return 200, {"echo": body, "hits": n}


# -- sequential steps -----------------------------------------------------------------------


async def sequential_async(ctx: Context) -> dict[str, Any]:
    a = await ctx.step.run("double", double, ctx.event.data["n"])
    b = await ctx.step.run("increment", increment, a)
    c = await ctx.step.run("square", lambda: b * b)
    return {"steps": [a, b, c]}


def sequential_sync(ctx: SyncContext) -> dict[str, Any]:
    a = ctx.step.run("double", double, ctx.event.data["n"])
    b = ctx.step.run("increment", increment_sync, a)
    c = ctx.step.run("square", lambda: b * b)
    return {"steps": [a, b, c]}


# -- a loop reusing one step id -------------------------------------------------------------


async def loop_async(ctx: Context) -> dict[str, Any]:
    total, partials = 0, []
    for i in range(4):
        total = await ctx.step.run("add", add, total, i)
        partials.append(total)
    return {"partials": partials}


def loop_sync(ctx: SyncContext) -> dict[str, Any]:
    total, partials = 0, []
    for i in range(4):
        total = ctx.step.run("add", add, total, i)
        partials.append(total)
    return {"partials": partials}


# -- parallel steps -------------------------------------------------------------------------


async def parallel_async(ctx: Context) -> dict[str, Any]:
    parts = await asyncio.gather(
        ctx.step.run("left", double, 1),
        ctx.step.run("right", double, 2),
        ctx.step.run("right", double, 3),  # a reused id inside the parallel group
    )
    summed = await ctx.step.run("sum", total, list(parts))
    return {"parts": list(parts), "total": summed}


def parallel_sync(ctx: SyncContext) -> dict[str, Any]:
    parts = ctx.step.parallel(
        functools.partial(ctx.step.run, "left", double, 1),
        functools.partial(ctx.step.run, "right", double, 2),
        functools.partial(ctx.step.run, "right", double, 3),
    )
    summed = ctx.step.run("sum", total, list(parts))
    return {"parts": list(parts), "total": summed}


# -- sleep ----------------------------------------------------------------------------------


async def sleep_async(ctx: Context) -> dict[str, Any]:
    before = await ctx.step.run("before", lambda: "awake")
    await ctx.step.sleep("nap", SHORT)
    after = await ctx.step.run("after", lambda: f"{before} again")
    return {"said": after}


def sleep_sync(ctx: SyncContext) -> dict[str, Any]:
    before = ctx.step.run("before", lambda: "awake")
    ctx.step.sleep("nap", SHORT)
    after = ctx.step.run("after", lambda: f"{before} again")
    return {"said": after}


# -- wait_for_event: matched, and timed out -------------------------------------------------

_SAME_TAG = "async.data.tag == event.data.tag"


async def wait_match_async(ctx: Context) -> dict[str, Any]:
    ev = await ctx.step.wait_for_event(
        "approval", event=APPROVAL_EVENT, if_=_SAME_TAG, timeout=WAIT_LONG
    )
    return {"approved_by": None if ev is None else ev.data["by"]}


def wait_match_sync(ctx: SyncContext) -> dict[str, Any]:
    ev = ctx.step.wait_for_event("approval", event=APPROVAL_EVENT, if_=_SAME_TAG, timeout=WAIT_LONG)
    return {"approved_by": None if ev is None else ev.data["by"]}


async def wait_timeout_async(ctx: Context) -> dict[str, Any]:
    ev = await ctx.step.wait_for_event("approval", event=NEVER_EVENT, timeout=SHORT)
    return {"timed_out": ev is None}


def wait_timeout_sync(ctx: SyncContext) -> dict[str, Any]:
    ev = ctx.step.wait_for_event("approval", event=NEVER_EVENT, timeout=SHORT)
    return {"timed_out": ev is None}


# -- wait_for_signal ------------------------------------------------------------------------


def signal_name(tag: str) -> str:
    return f"go-{tag}"


async def signal_async(ctx: Context) -> dict[str, Any]:
    sig = await ctx.step.wait_for_signal(
        "go", signal=signal_name(ctx.event.data["tag"]), timeout=WAIT_LONG
    )
    return (
        {"signal": None, "data": None} if sig is None else {"signal": sig.signal, "data": sig.data}
    )


def signal_sync(ctx: SyncContext) -> dict[str, Any]:
    sig = ctx.step.wait_for_signal(
        "go", signal=signal_name(ctx.event.data["tag"]), timeout=WAIT_LONG
    )
    return (
        {"signal": None, "data": None} if sig is None else {"signal": sig.signal, "data": sig.data}
    )


# -- invoke another function ----------------------------------------------------------------


async def child_async(ctx: Context) -> dict[str, Any]:
    return {"doubled": await ctx.step.run("double", double, ctx.event.data["n"])}


def child_sync(ctx: SyncContext) -> dict[str, Any]:
    return {"doubled": ctx.step.run("double", double, ctx.event.data["n"])}


async def invoke_async(ctx: Context) -> dict[str, Any]:
    out = await ctx.step.invoke(
        "child", function=function_id("child", "async"), data={"n": ctx.event.data["n"]}
    )
    return {"child": out}


def invoke_sync(ctx: SyncContext) -> dict[str, Any]:
    out = ctx.step.invoke(
        "child", function=function_id("child", "sync"), data={"n": ctx.event.data["n"]}
    )
    return {"child": out}


# -- a step that fails once, then succeeds on retry -----------------------------------------


async def retry_async(ctx: Context) -> dict[str, Any]:
    return {"value": await ctx.step.run("flaky", flaky, ctx.run_id)}


def retry_sync(ctx: SyncContext) -> dict[str, Any]:
    return {"value": ctx.step.run("flaky", flaky, ctx.run_id)}


# -- NonRetriableError, handled by on_failure -----------------------------------------------


async def doomed_async(ctx: Context) -> dict[str, Any]:
    await ctx.step.run("check", refuse, ctx.event.data["tag"])
    return {"unreachable": True}


def doomed_sync(ctx: SyncContext) -> dict[str, Any]:
    ctx.step.run("check", refuse, ctx.event.data["tag"])
    return {"unreachable": True}


def _failure_note(data: dict[str, Any]) -> str:
    return f"cleaned up after: {data['error']['message']}"


async def doomed_failure_async(ctx: Context) -> dict[str, Any]:
    data = ctx.event.data
    note = await ctx.step.run("clean-up", _failure_note, data)
    return {"failed_run": data["run_id"], "tag": data["event"]["data"]["tag"], "note": note}


def doomed_failure_sync(ctx: SyncContext) -> dict[str, Any]:
    data = ctx.event.data
    note = ctx.step.run("clean-up", _failure_note, data)
    return {"failed_run": data["run_id"], "tag": data["event"]["data"]["tag"], "note": note}


# -- typed step outputs, restored from the store after a sleep ------------------------------


async def typed_async(ctx: Context) -> dict[str, Any]:
    price = await ctx.step.run("price", quote)
    basket = await ctx.step.run("basket", make_basket)
    await ctx.step.sleep("settle", SHORT)
    return {
        "types": [type(price).__name__, type(basket).__name__],
        "total": price.amount * basket.qty,
        "currency": price.currency,
        "items": basket.items,
    }


def typed_sync(ctx: SyncContext) -> dict[str, Any]:
    price = ctx.step.run("price", quote_sync)
    basket = ctx.step.run("basket", make_basket)
    ctx.step.sleep("settle", SHORT)
    return {
        "types": [type(price).__name__, type(basket).__name__],
        "total": price.amount * basket.qty,
        "currency": price.currency,
        "items": basket.items,
    }


# -- handler args and functools.partial kwargs ----------------------------------------------


async def args_async(ctx: Context) -> dict[str, Any]:
    labelled = await ctx.step.run("label", label, 1, "a")
    joined = await ctx.step.run("join", functools.partial(join, sep="-"), "x", "y")
    return {"label": labelled, "joined": joined}


def args_sync(ctx: SyncContext) -> dict[str, Any]:
    labelled = ctx.step.run("label", label, 1, "a")
    joined = ctx.step.run("join", functools.partial(join, sep="-"), "x", "y")
    return {"label": labelled, "joined": joined}


# -- route workflows ------------------------------------------------------------------------


async def workflow_async(context: WorkflowContext[dict[str, Any]]) -> dict[str, Any]:
    payload = context.request_payload
    doubled = await context.run("double", double, payload["n"])
    answer = await context.call("call", payload["callback"], body={"doubled": doubled})
    ids = await context.notify("notify", NOTIFY_EVENT, {"tag": payload["tag"]})
    return {
        "tag": payload["tag"],
        "doubled": doubled,
        "status": answer.status,
        "answer": answer.body,
        "notified": len(ids),
    }


def workflow_sync(context: SyncWorkflowContext[dict[str, Any]]) -> dict[str, Any]:
    payload = context.request_payload
    doubled = context.run("double", double, payload["n"])
    answer = context.call("call", payload["callback"], body={"doubled": doubled})
    ids = context.notify("notify", NOTIFY_EVENT, {"tag": payload["tag"]})
    return {
        "tag": payload["tag"],
        "doubled": doubled,
        "status": answer.status,
        "answer": answer.body,
        "notified": len(ids),
    }


WORKFLOWS: dict[str, Callable[..., Any]] = {"async": workflow_async, "sync": workflow_sync}

# -- registration ---------------------------------------------------------------------------

SCENARIOS: dict[str, dict[str, Callable[..., Any]]] = {
    "sequential": {"async": sequential_async, "sync": sequential_sync},
    "loop": {"async": loop_async, "sync": loop_sync},
    "parallel": {"async": parallel_async, "sync": parallel_sync},
    "sleep": {"async": sleep_async, "sync": sleep_sync},
    "wait-match": {"async": wait_match_async, "sync": wait_match_sync},
    "wait-timeout": {"async": wait_timeout_async, "sync": wait_timeout_sync},
    "signal": {"async": signal_async, "sync": signal_sync},
    "child": {"async": child_async, "sync": child_sync},
    "invoke": {"async": invoke_async, "sync": invoke_sync},
    "retry": {"async": retry_async, "sync": retry_sync},
    "doomed": {"async": doomed_async, "sync": doomed_sync},
    "typed": {"async": typed_async, "sync": typed_sync},
    "args": {"async": args_async, "sync": args_sync},
}
ON_FAILURE: dict[str, dict[str, Callable[..., Any]]] = {
    "doomed": {"async": doomed_failure_async, "sync": doomed_failure_sync},
}


def register(durable: Durable) -> None:
    """Declare every event-triggered scenario function, in both modes, on `durable`."""
    for scenario, handlers in SCENARIOS.items():
        for mode, handler in handlers.items():
            durable.function(
                id=function_id(scenario, mode),
                trigger=TriggerEvent(event_name(scenario, mode)),
                on_failure=ON_FAILURE.get(scenario, {}).get(mode),
            )(handler)
