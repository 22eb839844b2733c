"""What the dashboard reads of runs through /v1: filters by event id and time, what a run
waits for, and the runs it invoked, on both stores."""

from __future__ import annotations

import time
from typing import Any

from durable_core import Context, Durable, TriggerEvent

from .conftest import StartFactory, wait_until


def _family() -> Durable:
    d = Durable("t", dev=True)

    @d.function(id="child", trigger=TriggerEvent("t/child"))
    async def child(ctx: Context) -> Any:
        approval = await ctx.step.wait_for_event(
            "approval", event="t/approve", timeout="1h", if_="async.data.ok == true"
        )
        await ctx.step.wait_for_signal("go", signal="go-signal", timeout="1h")
        return approval is not None

    @d.function(id="parent", trigger=TriggerEvent("t/parent"))
    async def parent(ctx: Context) -> Any:
        return await ctx.step.invoke("call-child", function=child, data={"n": 1})

    return d


def test_runs_by_event_id_and_time(embedded: StartFactory) -> None:
    h = embedded(_family())
    h.send("t/parent", id="order-1")
    h.send("t/parent", id="order-2")
    h.wait_runs("parent", 2)
    (run,) = h.runs("parent", event_id="order-1")
    assert run["event"]["id"] == "order-1"
    assert h.runs(event_id="nope") == []
    assert h.runs("parent", since=int(time.time() * 1000) + 3_600_000) == []
    assert len(h.runs("parent", since=0)) == 2


def test_a_run_says_what_it_waits_for_and_links_its_children(embedded: StartFactory) -> None:
    h = embedded(_family())
    h.send("t/parent")
    parent = h.wait_runs("parent")[0]
    kids = wait_until("the child run", lambda: h.run(parent["run_id"])["children"])
    (kid,) = kids
    assert kid["function_id"] == h.fn_id("child")
    child = h.wait_status(kid["run_id"], "waiting")
    assert child["parent_run_id"] == parent["run_id"]
    (wait,) = child["waiting_on"]
    assert (wait["kind"], wait["event"], wait["expression"]) == (
        "event", "t/approve", "async.data.ok == true",
    )  # fmt: skip
    assert wait["until"] > time.time() * 1000
    h.send("t/approve", {"ok": True})
    signal = wait_until(
        "the signal wait",
        lambda: [w for w in h.run(kid["run_id"])["waiting_on"] if w["kind"] == "signal"],
    )
    assert signal[0]["signal"] == "go-signal"
    h.post("/v1/signals", {"signal": "go-signal"})
    assert h.finish(parent["run_id"])["output"] is True
    assert h.run(kid["run_id"])["waiting_on"] == []
