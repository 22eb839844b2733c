"""A step called with an argument that can never work (a bad duration, date, id, expression,
handler or event) fails the run at once: the request answers 500 with `x-inngest-no-retry`,
an `InvalidStepError` naming the step and the bad value, even when the function catches it.
Retrying would only repeat the same mistake with a growing backoff.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from durable_core import Context, Durable, SyncContext, TriggerEvent
from durable_core._execute import ExecutionRequest, Wire, execute, to_wire

EVENT = {"name": "shop/order.created", "data": {"id": 1}, "id": "evt-1", "ts": 1_700_000_000_000}

# (the bad call, what the message must name)
CASES: dict[str, tuple[Callable[[Any], Any], list[str]]] = {
    "sleep duration": (lambda s: s.sleep("nap", "30 seconds"), ["'nap'", "'30 seconds'"]),
    "negative sleep": (lambda s: s.sleep("nap", -5), ["'nap'", "-5", "negative"]),
    "sleep_until a string": (
        lambda s: s.sleep_until("later", "2030-01-01"),
        ["'later'", "'2030-01-01'", "datetime"],
    ),
    "wait timeout": (
        lambda s: s.wait_for_event("w", event="shop/paid", timeout="forever"),
        ["'w'", "'forever'"],
    ),
    "wait expression": (
        lambda s: s.wait_for_event(
            "w", event="shop/paid", timeout="1h", if_="async.data.id === event.data.id"
        ),
        ["'w'", "async.data.id === event.data.id"],
    ),
    "wait variable": (
        lambda s: s.wait_for_event("w", event="shop/paid", timeout="1h", if_="evt.data.id == 1"),
        ["'w'", "'evt'"],
    ),
    "wait for a wildcard": (
        lambda s: s.wait_for_event("w", event="shop/*", timeout="1h"),
        ["'w'", "'shop/*'"],
    ),
    "signal timeout": (
        lambda s: s.wait_for_signal("sig", signal="go", timeout="1 hour"),
        ["'sig'", "'1 hour'"],
    ),
    "signal conflict mode": (
        lambda s: s.wait_for_signal("sig", signal="go", timeout="1h", on_conflict="ignore"),
        ["'sig'", "'ignore'"],
    ),
    "empty signal": (
        lambda s: s.wait_for_signal("sig", signal="", timeout="1h"),
        ["'sig'", "signal"],
    ),
    "invoke timeout": (
        lambda s: s.invoke("child", function="other", timeout="soon"),
        ["'child'", "'soon'"],
    ),
    "invoke data": (
        lambda s: s.invoke("child", function="other", data=[1, 2]),
        ["'child'", "[1, 2]"],
    ),
    "empty step id": (lambda s: s.run("", lambda: 1), ["step id", "''"]),
    "step id not a string": (lambda s: s.sleep(42, "1s"), ["step id", "42"]),
    "handler not callable": (lambda s: s.run("r", 5), ["'r'", "5", "callable"]),
    "event without a name": (
        lambda s: s.send_event("notify", {"data": {"id": 1}}),
        ["'notify'", "name"],
    ),
}


def _define(flavour: str, bad: Callable[[Any], Any], swallow: bool) -> Any:
    app = Durable("shop", dev=True)
    calls: list[int] = []
    if flavour == "async":

        @app.function(id="f", trigger=TriggerEvent("shop/order.created"))
        async def fn(ctx: Context) -> str:
            calls.append(1)
            try:
                out = bad(ctx.step)
                if inspect.isawaitable(out):
                    await out
            except Exception:
                if not swallow:
                    raise
            return "carried on"

    else:

        @app.function(id="f", trigger=TriggerEvent("shop/order.created"))
        def fn(ctx: SyncContext) -> str:
            calls.append(1)
            try:
                bad(ctx.step)
            except Exception:
                if not swallow:
                    raise
            return "carried on"

    return fn


async def _call(fn: Any) -> Wire:
    found = fn.app.find(fn.id)
    assert found is not None
    body = {"event": EVENT, "steps": {}, "ctx": {"run_id": "run-1", "attempt": 0}, "version": 2}
    req = ExecutionRequest.model_validate(body)

    async def sender(events: Any) -> list[str]:
        return ["id"]

    outcome = await execute(
        found[0], found[1], req, None, sender=sender, sync_sender=lambda events: ["id"]
    )
    return to_wire(fn, outcome)


@pytest.mark.parametrize("swallow", [False, True], ids=["raised", "swallowed"])
@pytest.mark.parametrize("flavour", ["async", "sync"])
@pytest.mark.parametrize("case", list(CASES))
async def test_a_step_misused_fails_the_run_at_once_naming_step_and_value(
    case: str, flavour: str, swallow: bool
) -> None:
    bad, named = CASES[case]
    wire = await _call(_define(flavour, bad, swallow))
    assert wire.status == 500, wire
    assert wire.headers.get("x-inngest-no-retry") == "true", wire.headers
    assert wire.body["name"] == "InvalidStepError", wire.body
    for part in named:
        assert part in wire.body["message"], (part, wire.body["message"])
