"""Step and function outputs, and events sent or functions invoked in-process, keep the limits
the HTTP intake keeps: an integer beyond +-(2^53-1) (which no canonical JSON can carry, so a
standalone orchestrator could never deliver the run again), NaN, or a NUL character is refused
where it is produced, naming it, the same in embedded and standalone mode."""

from __future__ import annotations

from typing import Any

import pytest

from durable_core import Context, Durable, DurableError, TriggerEvent
from durable_core.events import Event

from .conftest import Harness, StartFactory
from .test_api_limits import RANGE, listings_answer


@pytest.fixture
def h(embedded: StartFactory) -> Harness:
    d = Durable("t", dev=True)

    @d.function(id="ok", trigger=TriggerEvent("t/ok"))
    async def ok(ctx: Context) -> Any:
        return await ctx.step.run("echo", lambda: ctx.event.data)

    @d.function(id="big-step", trigger=TriggerEvent("t/big-step"), retries=3)
    async def big_step(ctx: Context) -> Any:
        return await ctx.step.run("charge", lambda: {"amount": 2**53 + 1})

    @d.function(id="big-output", trigger=TriggerEvent("t/big-output"), retries=3)
    async def big_output(ctx: Context) -> Any:
        return [1, {"amount": -(2**60)}]

    return embedded(d)


@pytest.mark.parametrize(
    ("fn", "where"),
    [("big-step", "step 'charge'"), ("big-output", "function 'big-output'")],
)
def test_an_output_with_an_integer_beyond_2_53_fails_the_run_at_once_naming_it(
    h: Harness, fn: str, where: str
) -> None:
    h.send(f"t/{fn}")
    run = h.only_run(fn)
    assert run["status"] == "failed", run
    message = run["error"]["message"]
    assert where in message and RANGE in message and "as a string" in message, message
    attempts = [s["attempt"] for s in run["steps"] if s["error"]]
    assert max(attempts, default=0) == 0, run["steps"]  # not retried: it cannot succeed


def test_in_process_sends_and_invokes_keep_the_same_limits(h: Harness) -> None:
    d = h.durable
    with pytest.raises(DurableError, match=r"event\.data\.n: integer 9007199254740993"):
        d.send({"name": "t/ok", "data": {"n": 2**53 + 1}})
    with pytest.raises(DurableError, match=r"events\[1\]\.data\.x: nan is not JSON"):
        d.send([{"name": "t/ok"}, Event(name="t/ok", data={"x": float("nan")})])
    with pytest.raises(DurableError, match=r"event\.data\.k: text cannot contain a NUL"):
        d.send({"name": "t/ok", "data": {"k": "a\x00"}})
    with pytest.raises(DurableError, match=r"data\.n: integer"):
        d.invoke("ok", {"n": 2**60})
    assert h.runs() == []
    listings_answer(h)
