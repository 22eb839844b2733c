"""Two runs waiting for one signal name: `on_conflict="replace"` hands the name to the newer
run and the displaced run gets its timeout (`None`, as in Inngest), `on_conflict="fail"`
raises a `StepError` named `SignalConflict` in the newer run, which the function can catch.
"""

from __future__ import annotations

from typing import Any

import pytest

from durable_core import Context, Durable, StepError, SyncContext, TriggerEvent

from .conftest import StartFactory

SERVER = {"async": "testclient", "sync": "uvicorn"}
modes = pytest.mark.parametrize(
    ("database_url", "mode"),
    [("sqlite", "async"), ("postgres", "async"), ("sqlite", "sync")],
    indirect=["database_url"],
)


def _waiter(d: Durable, mode: str, on_conflict: str, timeout: str) -> None:
    """Function `w`: waits for signal `approve`, reports what it got, or the conflict."""
    if mode == "async":

        @d.function(id="w", trigger=TriggerEvent("t/wait"), retries=0)
        async def w(ctx: Context) -> Any:
            try:
                sig = await ctx.step.wait_for_signal(
                    "sig", signal="approve", timeout=timeout, on_conflict=on_conflict
                )
            except StepError as err:
                return {"conflict": err.name, "message": err.message}
            return {"got": None if sig is None else sig.data}
    else:

        @d.function(id="w", trigger=TriggerEvent("t/wait"), retries=0)
        def w(ctx: SyncContext) -> Any:
            try:
                sig = ctx.step.wait_for_signal(
                    "sig", signal="approve", timeout=timeout, on_conflict=on_conflict
                )
            except StepError as err:
                return {"conflict": err.name, "message": err.message}
            return {"got": None if sig is None else sig.data}


@modes
def test_a_run_displaced_by_replace_resumes_with_none_at_its_timeout(
    mode: str, embedded: StartFactory
) -> None:
    d = Durable("t", dev=True)
    _waiter(d, mode, "replace", "1s")
    h = embedded(d, server=SERVER[mode])
    h.send("t/wait", {"n": 1})
    first = h.wait_runs("w")[0]["run_id"]
    h.wait_status(first, "waiting")
    h.send("t/wait", {"n": 2})
    second = h.wait_runs("w", 2)[1]["run_id"]
    h.wait_status(second, "waiting")

    res = h.post("/v1/signals", {"signal": "approve", "data": "yes"})
    assert res.status_code == 200, res.text
    assert res.json() == {"run_id": second, "data": {"run_id": second}}
    assert h.finish(second)["output"] == {"got": "yes"}
    displaced = h.finish(first)  # its timeout: before the fix it waited for ever
    assert displaced["status"] == "completed", displaced
    assert displaced["output"] == {"got": None}


@modes
def test_on_conflict_fail_raises_a_signal_conflict_the_function_can_catch(
    mode: str, embedded: StartFactory
) -> None:
    d = Durable("t", dev=True)
    _waiter(d, mode, "fail", "10s")
    h = embedded(d, server=SERVER[mode])
    h.send("t/wait", {"n": 1})
    first = h.wait_runs("w")[0]["run_id"]
    h.wait_status(first, "waiting")
    h.send("t/wait", {"n": 2})
    second = h.finish(h.wait_runs("w", 2)[1]["run_id"])
    assert second["status"] == "completed", second
    assert second["output"]["conflict"] == "SignalConflict"
    assert "approve" in second["output"]["message"]

    # The first run still holds the name and gets the signal.
    res = h.post("/v1/signals", {"signal": "approve", "data": "yes"})
    assert res.json() == {"run_id": first, "data": {"run_id": first}}
    assert h.finish(first)["output"] == {"got": "yes"}


def test_an_uncaught_signal_conflict_fails_the_run_with_its_name(embedded: StartFactory) -> None:
    d = Durable("t", dev=True)

    @d.function(id="w", trigger=TriggerEvent("t/wait"), retries=0)
    async def w(ctx: Context) -> Any:
        sig = await ctx.step.wait_for_signal(
            "sig", signal="approve", timeout="10s", on_conflict="fail"
        )
        return None if sig is None else sig.data

    h = embedded(d)
    h.send("t/wait")
    first = h.wait_runs("w")[0]["run_id"]
    h.wait_status(first, "waiting")
    h.send("t/wait")
    second = h.finish(h.wait_runs("w", 2)[1]["run_id"])
    assert second["status"] == "failed", second
    assert second["error"]["name"] == "SignalConflict", second["error"]
    assert h.run(first)["status"] == "waiting"
