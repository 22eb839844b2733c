"""One `durable.runs` log line per change of a run's state, written once its unit committed;
`ctx.logger` lines not repeated by replays; the JSON format; `durable.signal`."""

from __future__ import annotations

import datetime as _dt
import json
import logging
from typing import Any

import pytest

from durable_core import Context, Durable, JsonFormatter, TriggerEvent

from .conftest import StartFactory, sqlite_only, wait_until

pytestmark = sqlite_only  # the lines are written by the orchestrator whatever its store


def make_app(tries: dict[str, int]) -> Durable:
    d = Durable("logs", dev=True)

    @d.function(id="flow", trigger=TriggerEvent("logs/flow"))
    async def flow(ctx: Context) -> str:
        ctx.logger.info("hello from flow")
        await ctx.step.run("first", lambda: 1)

        def flaky() -> int:
            tries["flaky"] = tries.get("flaky", 0) + 1
            if tries["flaky"] == 1:
                raise ValueError("not yet")
            return 2

        await ctx.step.run("flaky", flaky)
        await ctx.step.sleep("nap", _dt.timedelta(milliseconds=20))
        got = await ctx.step.wait_for_signal("hold", signal="logs-go", timeout="1h")
        return f"got {got.data if got else None}"

    @d.function(id="boom", trigger=TriggerEvent("logs/boom"), retries=0)
    async def boom(ctx: Context) -> None:
        def fail() -> None:
            raise KeyError("no such thing")

        await ctx.step.run("explode", fail)

    @d.function(id="held", trigger=TriggerEvent("logs/held"))
    async def held(ctx: Context) -> None:
        await ctx.step.wait_for_event("approval", event="logs/approved", timeout="1h")

    return d


def lines(caplog: pytest.LogCaptureFixture, run_id: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "durable.runs" and getattr(r, "durable", {}).get("run_id") == run_id
    ]


def test_every_change_of_a_run_is_one_line(
    embedded: StartFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="durable")
    tries: dict[str, int] = {}
    d = make_app(tries)
    h = embedded(d)
    h.send("logs/flow")
    run_id = h.wait_runs("flow")[0]["run_id"]
    h.wait_status(run_id, "waiting")
    assert d.signal("logs-go", {"ok": 1}) == run_id
    assert d.signal("logs-nobody-waits") is None
    assert h.finish(run_id)["output"] == "got {'ok': 1}"

    head = f"run {run_id} of logs-flow"
    got = lines(caplog, run_id)
    assert got[0] == f"{head} started"
    assert f"{head}: step 'first' done" in got
    retry = next(line for line in got if "'flaky' failed" in line)
    assert retry.startswith(f"{head}: step 'flaky' failed (attempt 1): ValueError: not yet;")
    assert "retrying at 20" in retry
    assert f"{head}: step 'flaky' done" in got
    assert any(line.startswith(f"{head}: sleeping in step 'nap' until 20") for line in got)
    waiting = f"{head}: waiting in step 'hold' for signal 'logs-go' until 20"
    assert any(line.startswith(waiting) for line in got)
    assert got[-1] == f"{head} completed"
    assert len(got) == len(set(got)), got  # no change logged twice

    # The function replayed after the retry, the sleep and the signal: said hello once.
    hellos = [r for r in caplog.records if r.getMessage() == "hello from flow"]
    assert len(hellos) == 1
    assert (hellos[0].run_id, hellos[0].fn_id) == (run_id, "logs-flow")  # type: ignore[attr-defined]


def test_failed_and_cancelled_runs(
    embedded: StartFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="durable")
    h = embedded(make_app({}))
    h.send("logs/boom")
    boom = h.wait_runs("boom")[0]["run_id"]
    assert h.finish(boom)["status"] == "failed"
    got = lines(caplog, boom)
    assert f"run {boom} of logs-boom: step 'explode' failed: KeyError: 'no such thing'" in got
    assert got[-1].startswith(f"run {boom} of logs-boom failed: ")

    h.send("logs/held")
    held = h.wait_runs("held")[0]["run_id"]
    h.wait_status(held, "waiting")
    assert any("for event 'logs/approved'" in line for line in lines(caplog, held))
    assert h.post(f"/v1/runs/{held}/cancel").status_code == 200
    wait_until(
        "the cancel line", lambda: lines(caplog, held)[-1].endswith("cancelled through the API")
    )
    assert (
        lines(caplog, held)[-1] == f"run {held} of logs-held cancelled: cancelled through the API"
    )


def test_json_format_has_stable_keys(
    embedded: StartFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="durable")
    h = embedded(make_app({}))
    h.send("logs/boom")
    run_id = h.wait_runs("boom")[0]["run_id"]
    h.finish(run_id)
    fmt = JsonFormatter()
    objects: list[dict[str, Any]] = [
        json.loads(fmt.format(r))
        for r in caplog.records
        if getattr(r, "durable", {}).get("run_id") == run_id
    ]
    started, *_, failed = objects
    assert started == {
        "ts": started["ts"],
        "level": "INFO",
        "logger": "durable.runs",
        "message": f"run {run_id} of logs-boom started",
        "event": "started",
        "run_id": run_id,
        "function_id": "logs-boom",
    }
    assert failed["event"] == "failed" and failed["error"].startswith("KeyError")
    step = next(o for o in objects if o["event"] == "step_failed")
    assert step["step"] == "explode"
