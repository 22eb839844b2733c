"""What a run may store, as a user sees it: an output, a run's stored step results or its step
count over a limit fails the run at once, with a message that names the limit, its value and
how to raise it; a function's own limits and the orchestrator's (DURABLE_MAX_*) change them.

Every test runs on both stores, with the embedded orchestrator (functions called in-process,
each step checkpointed as it finishes)."""

from __future__ import annotations

from typing import Any

import pytest

from durable_core import Context, Durable, LimitExceededError, Limits, SyncContext, TriggerEvent
from durable_core._limits import RunLimits, Usage
from durable_core.errors import ConfigError
from durable_core.orchestrator import limits as run_limits
from durable_core.orchestrator.embedded import Embedded
from durable_core.orchestrator.transport import CallResult

from .conftest import DEADLINE, FINISHED, Harness, StartFactory, sqlite_only, wait_until

MB = 1024 * 1024
HOW = "raise it for the function with limits=Limits({field}=...)"


def finished(h: Harness, local_id: str, deadline: float = DEADLINE) -> dict[str, Any]:
    """The single run of `local_id` once it has finished, without its steps."""
    runs = wait_until(
        f"the run of {local_id} to finish",
        lambda: [r for r in h.runs(local_id) if r["status"] in FINISHED],
        deadline=deadline,
    )
    assert len(runs) == 1, runs
    return dict(runs[0])


def failure(run: dict[str, Any]) -> str:
    assert run["status"] == "failed", run
    assert run["error"]["name"] == "LimitExceededError", run["error"]
    return str(run["error"]["message"])


# -- each limit, at its default -----------------------------------------------------------------


def test_a_step_output_over_the_limit_fails_the_run_at_once(embedded: StartFactory) -> None:
    d = Durable("t", dev=True)
    ran: list[str] = []

    @d.function(id="big", trigger=TriggerEvent("t/big"), retries=3)
    async def big(ctx: Context) -> str:
        await ctx.step.run("small", lambda: "x" * 100)
        await ctx.step.run("huge", lambda: "x" * (5 * MB))
        ran.append("after")
        return await ctx.step.run("never", lambda: "unreachable")

    h = embedded(d)
    h.send("t/big")
    run = h.finish(finished(h, "big")["run_id"])
    message = failure(run)
    assert "the output of step 'huge' is 5.0 MB as JSON" in message
    assert "over the step_output limit of 4 MB" in message
    assert HOW.format(field="step_output") in message
    assert "--max-step-output" in message and "DURABLE_MAX_STEP_OUTPUT" in message
    # Not retried, and nothing of the refused output (or after it) was stored.
    assert ran == []
    assert [s["name"] for s in run["steps"] if s["op"] == "StepRun"] == ["small"]
    assert all(s["attempt"] == 0 for s in run["steps"]), run["steps"]
    assert "x" * 1000 not in str(run["steps"])


def test_the_function_output_over_the_limit_fails_the_run(embedded: StartFactory) -> None:
    d = Durable("t", dev=True)

    @d.function(id="big", trigger=TriggerEvent("t/big"))
    def big(ctx: SyncContext) -> list[int]:
        return [7] * (ctx.step.run("n", lambda: 3) * MB)  # "7," three million times: 6 MB

    h = embedded(d)
    h.send("t/big")
    message = failure(finished(h, "big"))
    assert "the output of function 'big' is 6.0 MB as JSON, over the step_output limit" in message


def test_a_run_whose_stored_step_results_exceed_the_total_fails(embedded: StartFactory) -> None:
    """Nine steps of 3.9 MB each: every output fits, but not all of them (32 MB by default)."""
    d = Durable("t", dev=True)
    done: list[int] = []

    @d.function(id="many", trigger=TriggerEvent("t/many"))
    async def many(ctx: Context) -> int:
        for i in range(9):
            await ctx.step.run(f"part-{i}", lambda: "y" * (39 * MB // 10))
            done.append(i)
        return len(done)

    h = embedded(d)
    h.send("t/many")
    message = failure(finished(h, "many"))
    assert "the output of step 'part-8' brings the run's stored step results to 35.1 MB" in message
    assert "over the run_output_total limit of 32 MB" in message
    assert HOW.format(field="run_output_total") in message
    assert "--max-run-output-total" in message and "DURABLE_MAX_RUN_OUTPUT_TOTAL" in message
    assert done == list(range(8))


def test_a_run_over_the_step_count_fails(
    embedded: StartFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DURABLE_MAX_STEPS", "50")  # the orchestrator's limit, for every function
    d = Durable("t", dev=True)
    done: list[int] = []

    @d.function(id="loop", trigger=TriggerEvent("t/loop"))
    async def loop(ctx: Context) -> int:
        for i in range(100):
            await ctx.step.run("tick", lambda n=i: n)
            done.append(i)
        return len(done)

    h = embedded(d)
    h.send("t/loop")
    message = failure(finished(h, "loop"))
    assert "the run reached 51 steps, over the steps limit of 50" in message
    assert HOW.format(field="steps") in message
    assert "--max-steps" in message and "DURABLE_MAX_STEPS" in message
    assert done == list(range(50))


@sqlite_only
def test_a_10000_step_run_passes_under_the_defaults(embedded: StartFactory) -> None:
    """On SQLite only: the step count comes from the run's stored results the same way on both
    stores (the over-the-limit test runs on both), and 10,000 commits on PostgreSQL take long."""
    d = Durable("t", dev=True)

    @d.function(id="long", trigger=TriggerEvent("t/long"))
    async def long(ctx: Context) -> int:
        total = 0
        for i in range(10_000):
            total += await ctx.step.run("add", lambda n=i: n)
        return total

    h = embedded(d)
    h.send("t/long")
    run = finished(h, "long", deadline=120)
    assert run["status"] == "completed", run
    assert run["output"] == sum(range(10_000))


# -- raising a limit ----------------------------------------------------------------------------


def _workflow(d: Durable, local_id: str, limit: str, limits: Limits | None) -> None:
    """A function that goes just over the orchestrator's limits set in `raise_limits`."""

    @d.function(id=local_id, trigger=TriggerEvent(f"t/{local_id}"), limits=limits)
    async def workflow(ctx: Context) -> int:
        if limit == "step_output":
            return len(await ctx.step.run("one", lambda: "z" * 2000))
        count, size = (5, 500) if limit == "run_output_total" else (12, 1)
        for _ in range(count):
            await ctx.step.run("part", lambda: "z" * size)
        return count


@pytest.mark.parametrize(
    ("limit", "raised"),
    [
        ("step_output", Limits(step_output="4KB")),
        ("run_output_total", Limits(run_output_total="4KB")),
        ("steps", Limits(steps=20)),
    ],
)
def test_raising_a_limit_per_function_lets_the_same_run_pass(
    limit: str, raised: Limits, embedded: StartFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DURABLE_MAX_STEP_OUTPUT", "1KB")
    monkeypatch.setenv("DURABLE_MAX_RUN_OUTPUT_TOTAL", "2KB")
    monkeypatch.setenv("DURABLE_MAX_STEPS", "10")
    d = Durable("t", dev=True)
    _workflow(d, "plain", limit, None)
    _workflow(d, "raised", limit, raised)
    h = embedded(d)
    h.send("t/plain")
    h.send("t/raised")
    assert f"over the {limit} limit of" in failure(finished(h, "plain"))
    assert finished(h, "raised")["status"] == "completed"


def test_a_function_can_lower_a_limit(embedded: StartFactory) -> None:
    d = Durable("t", dev=True)

    @d.function(id="tight", trigger=TriggerEvent("t/tight"), limits=Limits(step_output=100))
    async def tight(ctx: Context) -> str:
        return await ctx.step.run("words", lambda: "w" * 200)

    h = embedded(d)
    h.send("t/tight")
    assert "is 202 bytes as JSON, over the step_output limit of 100 bytes" in failure(
        finished(h, "tight")
    )


def test_a_bad_limit_variable_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURABLE_MAX_STEP_OUTPUT", "lots")
    with pytest.raises(ConfigError, match="DURABLE_MAX_STEP_OUTPUT='lots'"):
        Embedded(Durable("t", dev=True))


def test_the_error_is_non_retriable() -> None:
    assert LimitExceededError("x").retriable is False


def test_a_run_complete_op_is_held_to_the_output_limit_and_is_not_a_step() -> None:
    # The TypeScript SDK ends a run with `206 [..., {"op": "RunComplete", "data": output}]`.
    bounds = RunLimits(step_output=100, steps=1)
    done = {"op": "RunComplete", "id": "complete", "data": "x" * 10}
    fits = CallResult(206, {}, [{"op": "StepRun", "id": "a", "data": 1}, done])
    assert run_limits.over_limit(fits, bounds, Usage()) is None
    big = CallResult(206, {}, [{**done, "data": "x" * 200}])
    overrun = run_limits.over_limit(big, bounds, Usage())
    assert overrun is not None and overrun.op == big.body[0]
    assert "the output of the function" in overrun.error["message"]
