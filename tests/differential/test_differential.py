"""Our SDK answers every execution request exactly like the `inngest` SDK (0.5.19).

Each scenario is one run, played by `driver.Orchestrator` against the same function written
with both SDKs (`scenarios_peer.py`, `scenarios_ours.py`); any difference in status, ops,
headers or output fails with the transcript up to the divergence.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from . import scenarios_ours, scenarios_peer
from .driver import ABSENT, UNSET, Orchestrator, Scenario

HOUR_EVENT = {
    "name": "diff/approved",
    "data": {"order": 7, "by": "bob"},
    "id": "evt-2",
    "ts": 1_700_000_001_000,
}
CHILD_FAILED = {
    "error": {
        "name": "KeyError",
        "message": "'n'",
        "stack": "Traceback (most recent call last): ...",
    }
}


def _error(name: str, code: str, message: str) -> dict[str, Any]:
    return {"name": name, "code": code, "message": message, "stack_is_str": True}


SCENARIOS = [
    Scenario(
        "sequential",
        max_attempts=3,
        data={"who": "ada"},
        expect_output={"a": 3, "b": 13, "c": {"sum": 16, "who": "ada"}},
        expect_ops=frozenset({"StepRun"}),
    ),
    Scenario(
        "loop", max_attempts=3, expect_output=[100, 101, 102], expect_ops=frozenset({"StepRun"})
    ),
    Scenario(
        "sleep", max_attempts=3, expect_output="slept then woke", expect_ops=frozenset({"Sleep"})
    ),
    Scenario(
        "wait_matched",
        max_attempts=3,
        data={"order": 7},
        waits={"approval": HOUR_EVENT},
        expect_output={"approved": True, "by": "bob", "name": "diff/approved"},
        expect_ops=frozenset({"WaitForEvent"}),
    ),
    Scenario(
        "wait_timeout",
        max_attempts=3,
        data={"order": 7},
        waits={"approval": None},
        expect_output={"approved": False},
        expect_ops=frozenset({"WaitForEvent"}),
    ),
    Scenario(
        "invoke",
        max_attempts=3,
        invokes={"call-child": {"data": {"doubled": 42}}},
        expect_output={"child": {"doubled": 42}},
        expect_ops=frozenset({"InvokeFunction"}),
    ),
    Scenario(
        "invoke_by_id",
        max_attempts=3,
        invokes={"call-child": {"data": {"doubled": 10}}},
        expect_output={"child": {"doubled": 10}},
        expect_ops=frozenset({"InvokeFunction"}),
    ),
    Scenario(
        "invoke_no_data",
        max_attempts=3,
        invokes={"call-child": {"data": {"doubled": 0}}},
        expect_output={"doubled": 0},
        expect_ops=frozenset({"InvokeFunction"}),
    ),
    Scenario(
        "invoke_failed",
        max_attempts=3,
        invokes={"call-child": CHILD_FAILED},
        expect_output={"caught": "KeyError", "message": "'n'"},
        expect_ops=frozenset({"InvokeFunction"}),
    ),
    Scenario(
        "parallel_gather",
        max_attempts=3,
        expect_output={"pair": [2, 4], "after": 6},
        expect_ops=frozenset({"StepPlanned", "StepRun"}),
    ),
    Scenario(
        "parallel_explicit",
        max_attempts=3,
        expect_output={"pair": [2, 4], "last": "done"},
        expect_ops=frozenset({"StepPlanned", "StepRun"}),
    ),
    Scenario(
        "parallel_mixed",
        max_attempts=3,
        waits={"signal": None},
        expect_output={"work": "worked", "pause": None, "signal": True},
        expect_ops=frozenset({"StepPlanned", "Sleep", "WaitForEvent"}),
    ),
    Scenario(
        "parallel_retry",
        max_attempts=3,
        expect_output=["ok on attempt 1", 3],
        expect_ops=frozenset({"StepPlanned", "StepError", "StepRun"}),
    ),
    Scenario(
        "step_retry",
        max_attempts=3,
        expect_output={"got": "ok on attempt 1"},
        expect_ops=frozenset({"StepError", "StepRun"}),
    ),
    Scenario(
        "step_failed_return",
        max_attempts=2,
        expect_output="refunded",
        expect_ops=frozenset({"StepError", "StepFailed", "StepRun"}),
    ),
    Scenario(
        "step_failed_reraise",
        max_attempts=2,
        expect_status=500,
        expect_no_retry=True,
        expect_output=_error("ValueError", "step_errored", "card declined"),
        expect_ops=frozenset({"StepError", "StepFailed"}),
    ),
    Scenario(
        "step_error_caught",
        max_attempts=2,
        expect_output={"name": "ValueError", "message": "card declined", "has_stack": True},
        expect_ops=frozenset({"StepFailed"}),
    ),
    Scenario(
        "non_retriable_step",
        max_attempts=4,
        expect_status=500,
        expect_no_retry=True,
        expect_output=_error("NonRetriableError", "non_retriable_error", "the order was cancelled"),
        expect_ops=frozenset({"StepRun"}),
    ),
    Scenario(
        "non_retriable_fn",
        max_attempts=4,
        expect_status=500,
        expect_no_retry=True,
        expect_output=_error("NonRetriableError", "non_retriable_error", "gave up after 1 step"),
        expect_ops=frozenset({"StepRun"}),
    ),
    Scenario(
        "fn_error",
        max_attempts=4,
        expect_status=500,
        expect_output=_error("KeyError", "unknown", "'missing'"),
        expect_ops=frozenset({"StepRun"}),
    ),
    Scenario(
        "retry_after_step",
        max_attempts=4,
        expect_status=500,
        expect_retry_after=True,
        expect_output=_error("RetryAfterError", "retry_after_error", "rate limited"),
    ),
    Scenario(
        "sync_sequential",
        max_attempts=3,
        expect_output={"a": 3, "b": 13, "total": [13, 14]},
        expect_ops=frozenset({"StepRun", "Sleep"}),
    ),
    Scenario(
        "sync_parallel",
        max_attempts=3,
        expect_output={"pair": [2, 4], "last": "done"},
        expect_ops=frozenset({"StepPlanned", "StepRun"}),
    ),
    Scenario(
        "sync_step_errors",
        max_attempts=2,
        expect_output={
            "got": "ok on attempt 1",
            "caught": "ValueError",
            "message": "card declined",
        },
        expect_ops=frozenset({"StepError", "StepRun", "StepFailed"}),
    ),
    Scenario(
        "sync_non_retriable",
        max_attempts=3,
        expect_status=500,
        expect_no_retry=True,
        expect_output=_error("NonRetriableError", "non_retriable_error", "the order was cancelled"),
    ),
]


@pytest.fixture(scope="module")
def clients() -> Iterator[tuple[TestClient, TestClient]]:
    with TestClient(scenarios_peer.app) as peer, TestClient(scenarios_ours.app) as ours:
        yield peer, ours


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.fn_id)
def test_same_wire_behaviour_as_inngest(
    scenario: Scenario, clients: tuple[TestClient, TestClient]
) -> None:
    orchestrator = Orchestrator(scenario, *clients)
    final = orchestrator.run()

    # Both SDKs agreed at every request (the orchestrator raises otherwise); check that the
    # scenario exercised what it is about.
    result = final.peer
    assert result["status"] == scenario.expect_status, orchestrator.report("unexpected status")
    if scenario.expect_output is not UNSET:
        got = result["output"] if result["status"] == 200 else result["error"]
        assert got == scenario.expect_output, orchestrator.report("unexpected final output")
    missing = scenario.expect_ops - orchestrator.seen_ops
    assert not missing, orchestrator.report(f"the run never reported {sorted(missing)}")
    assert (result["x-inngest-no-retry"] == "true") is scenario.expect_no_retry, (
        orchestrator.report("unexpected x-inngest-no-retry header")
    )
    assert (result["retry-after"] is not ABSENT) is scenario.expect_retry_after, (
        orchestrator.report("unexpected retry-after header")
    )
