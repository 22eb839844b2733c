"""One scenario suite, run against FastAPI, Starlette, Flask and Django, each as an async and
as a sync function, through a real server and the real embedded orchestrator, over HTTP only.

Every event-triggered run of a framework starts at once (`kicked_off`), so sleeps, timeouts
and retries overlap; each test then waits for its own run and checks its output and steps.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from .apps import start
from .conftest import ServedApp
from .functions import (
    APPROVAL_EVENT,
    FLAKY_ENDPOINT,
    MODES,
    NOTIFY_EVENT,
    WORKFLOW_PATHS,
    event_name,
    function_id,
    signal_name,
)

N = 3
KICKED_OFF = [
    "sequential",
    "loop",
    "parallel",
    "sleep",
    "wait-match",
    "wait-timeout",
    "signal",
    "invoke",
    "retry",
    "doomed",
    "typed",
    "args",
]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """Each scenario as an async function and as a sync function."""
    value: str = request.param
    return value


def tag(app: ServedApp, scenario: str, mode: str) -> str:
    return f"{app.framework}-{app.store}-{scenario}-{mode}"


@pytest.fixture(scope="module")
def kicked_off(served_app: ServedApp) -> ServedApp:
    """The app, with one run of every event-triggered scenario started, in both modes."""
    events = [
        {"name": event_name(s, m), "data": {"tag": tag(served_app, s, m), "n": N}}
        for s in KICKED_OFF
        for m in MODES
    ]
    assert len(served_app.send(events)) == len(events)
    return served_app


def started(app: ServedApp, scenario: str, mode: str) -> str:
    """The id of the scenario's kicked-off run."""
    run_id: str = app.find_run(function_id(scenario, mode), tag=tag(app, scenario, mode))["run_id"]
    return run_id


def finished(app: ServedApp, scenario: str, mode: str) -> dict[str, Any]:
    return app.wait_run(started(app, scenario, mode))


def completed(app: ServedApp, scenario: str, mode: str) -> dict[str, Any]:
    run = finished(app, scenario, mode)
    assert run["status"] == "completed", run
    return run


def steps(run: dict[str, Any], *names: str) -> list[tuple[str, str, int, Any]]:
    """(name, op, attempt, output) of the run's step records, in order (only `names` if given)."""
    return [
        (s["name"], s["op"], s["attempt"], s["output"])
        for s in run["steps"]
        if not names or s["name"] in names
    ]


def hashed(step_id: str, n: int = 0) -> str:
    """The id a step record carries: the (n+1)-th use of `step_id` in the run."""
    return hashlib.sha1((step_id if n == 0 else f"{step_id}:{n}").encode()).hexdigest()


def test_sequential_steps(kicked_off: ServedApp, mode: str) -> None:
    run = completed(kicked_off, "sequential", mode)
    assert run["output"] == {"steps": [6, 7, 49]}
    assert steps(run) == [
        ("double", "StepRun", 0, 6),
        ("increment", "StepRun", 0, 7),
        ("square", "StepRun", 0, 49),
    ]


def test_loop_reuses_one_step_id(kicked_off: ServedApp, mode: str) -> None:
    run = completed(kicked_off, "loop", mode)
    assert run["output"] == {"partials": [0, 1, 3, 6]}
    assert steps(run) == [("add", "StepRun", 0, v) for v in (0, 1, 3, 6)]
    assert [s["id"] for s in run["steps"]] == [hashed("add", i) for i in range(4)]


def test_parallel_steps(kicked_off: ServedApp, mode: str) -> None:
    run = completed(kicked_off, "parallel", mode)
    assert run["output"] == {"parts": [2, 4, 6], "total": 12}
    outputs = {s["id"]: (s["name"], s["output"]) for s in run["steps"] if s["op"] == "StepRun"}
    assert outputs == {
        hashed("left"): ("left", 2),
        hashed("right"): ("right", 4),
        hashed("right", 1): ("right", 6),
        hashed("sum"): ("sum", 12),
    }
    assert len(run["steps"]) == 4  # each step ran once
    assert run["steps"][-1]["name"] == "sum"


def test_sleep(kicked_off: ServedApp, mode: str) -> None:
    run = completed(kicked_off, "sleep", mode)
    assert run["output"] == {"said": "awake again"}
    assert [(name, op) for name, op, _, _ in steps(run)] == [
        ("before", "StepRun"),
        ("nap", "Sleep"),
        ("after", "StepRun"),
    ]
    nap = run["steps"][1]
    assert nap["ended_at"] is not None and nap["ended_at"] >= nap["started_at"]


def test_wait_for_event_matched(kicked_off: ServedApp, mode: str) -> None:
    app = kicked_off
    run_id = started(app, "wait-match", mode)
    app.wait_run(run_id, ("waiting",))
    mine = tag(app, "wait-match", mode)
    # Another run's approval does not match the `if_` expression; this run's does.
    app.send({"name": APPROVAL_EVENT, "data": {"tag": f"{mine}-other", "by": "mallory"}})
    app.send({"name": APPROVAL_EVENT, "data": {"tag": mine, "by": "alice"}})
    run = app.wait_run(run_id)
    assert run["status"] == "completed", run
    assert run["output"] == {"approved_by": "alice"}
    [(name, op, _, matched)] = steps(run)
    assert (name, op) == ("approval", "WaitForEvent")
    assert (matched["name"], matched["data"]) == (APPROVAL_EVENT, {"tag": mine, "by": "alice"})


def test_wait_for_event_times_out(kicked_off: ServedApp, mode: str) -> None:
    run = completed(kicked_off, "wait-timeout", mode)
    assert run["output"] == {"timed_out": True}
    assert steps(run) == [("approval", "WaitForEvent", 0, None)]


def test_wait_for_signal(kicked_off: ServedApp, mode: str) -> None:
    app = kicked_off
    run_id = started(app, "signal", mode)
    app.wait_run(run_id, ("waiting",))
    name = signal_name(tag(app, "signal", mode))
    res = app.signal(name, {"approved": True})
    assert res.status_code == 200, res.text
    assert res.json() == {"run_id": run_id, "data": {"run_id": run_id}}
    run = app.wait_run(run_id)
    assert run["status"] == "completed", run
    assert run["output"] == {"signal": name, "data": {"approved": True}}
    assert steps(run) == [("go", "WaitForSignal", 0, {"signal": name, "data": {"approved": True}})]
    # Nobody waits for it any more.
    assert app.signal(name, {"approved": False}).status_code == 404


def test_invoke(kicked_off: ServedApp, mode: str) -> None:
    app = kicked_off
    run = completed(app, "invoke", mode)
    assert run["output"] == {"child": {"doubled": 2 * N}}
    assert steps(run) == [("child", "InvokeFunction", 0, {"data": {"doubled": 2 * N}})]
    [child] = [
        r for r in app.runs(function_id("child", mode)) if r["parent_run_id"] == run["run_id"]
    ]
    assert child["status"] == "completed"
    assert child["output"] == {"doubled": 2 * N}
    assert child["event"]["data"] == {"n": N}


def test_step_retried_after_failure(kicked_off: ServedApp, mode: str) -> None:
    run = completed(kicked_off, "retry", mode)
    assert run["output"] == {"value": "ok after 2 tries"}
    [(failed_op, failed_attempt), (ok_op, ok_attempt)] = [
        (op, attempt) for _, op, attempt, _ in steps(run, "flaky")
    ]
    assert (failed_op, failed_attempt) == ("StepError", 0)
    assert (ok_op, ok_attempt) == ("StepRun", 1)
    error = run["steps"][0]["error"]
    assert error["name"] == "RuntimeError"
    assert error["message"] == f"first try for {run['run_id']} fails"


def test_non_retriable_error_runs_on_failure(kicked_off: ServedApp, mode: str) -> None:
    app = kicked_off
    mine = tag(app, "doomed", mode)
    run = finished(app, "doomed", mode)
    assert run["status"] == "failed", run
    assert run["output"] is None
    assert run["error"]["name"] == "NonRetriableError"
    assert run["error"]["message"] == f"order {mine} cannot be processed"
    # One attempt: the error is not retried.
    assert [(s["op"], s["attempt"]) for s in run["steps"]] == [("FunctionError", 0)]

    failure = app.find_run(function_id("doomed", mode) + "-failure", run_id=run["run_id"])
    failure = app.wait_run(failure["run_id"])
    assert failure["status"] == "completed", failure
    assert failure["event"]["name"] == "inngest/function.failed"
    assert failure["output"] == {
        "failed_run": run["run_id"],
        "tag": mine,
        "note": f"cleaned up after: order {mine} cannot be processed",
    }


def test_typed_outputs_restored_from_store(kicked_off: ServedApp, mode: str) -> None:
    run = completed(kicked_off, "typed", mode)
    assert run["output"] == {
        "types": ["Price", "Basket"],
        "total": 21,
        "currency": "EUR",
        "items": ["tea", "cake"],
    }
    assert steps(run) == [
        ("price", "StepRun", 0, {"amount": 7, "currency": "EUR"}),
        ("basket", "StepRun", 0, {"items": ["tea", "cake"], "qty": 3}),
        ("settle", "Sleep", 0, None),
    ]


def test_handler_args_and_partial(kicked_off: ServedApp, mode: str) -> None:
    run = completed(kicked_off, "args", mode)
    assert run["output"] == {"label": "1:a", "joined": "x-y"}
    assert steps(run) == [("label", "StepRun", 0, "1:a"), ("join", "StepRun", 0, "x-y")]


def test_route_workflow(served_app: ServedApp, mode: str) -> None:
    app = served_app
    mine = f"{app.framework}-{app.store}-workflow-{mode}"
    payload = {"n": 7, "tag": mine, "callback": f"{app.base_url}/scn/flaky/{mine}"}
    res = app.post(WORKFLOW_PATHS[mode], payload)
    assert res.status_code == 200, res.text
    assert list(res.json()) == ["workflowRunId"]
    run = app.wait_run(res.json()["workflowRunId"])
    assert run["status"] == "completed", run
    assert run["function_id"] == app.fn_id(f"route-wf-{mode}")
    assert run["event"]["data"]["payload"] == payload
    assert run["output"] == {
        "tag": mine,
        "doubled": 14,
        "status": 200,
        "answer": {"echo": {"doubled": 14}, "hits": 2},
        "notified": 1,
    }
    # The call answered 500 once, so its step failed once and was retried.
    assert FLAKY_ENDPOINT[mine] == 2
    assert [(name, op, attempt) for name, op, attempt, _ in steps(run)] == [
        ("double", "StepRun", 0),
        ("call", "StepError", 0),
        ("call", "StepRun", 1),
        ("notify", "StepRun", 0),
    ]
    assert steps(run, "call")[1][3]["body"] == {"echo": {"doubled": 14}, "hits": 2}
    [notified] = steps(run, "notify")[0][3]
    [event] = [e for e in app.events(NOTIFY_EVENT) if e["data"] == {"tag": mine}]
    assert event["internal_id"] == notified


@pytest.mark.parametrize("framework", ["flask", "django"])
def test_stopping_closes_the_hosted_loop(
    framework: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WSGI apps host the embedded orchestrator on a thread with its own event loop; stopping
    the app must close that loop (an open one leaks its sockets: a ResourceWarning)."""
    monkeypatch.setenv("DURABLE_DIR", str(tmp_path))
    running = start(framework)
    running.stop()
    assert running.hosted_loop is not None
    assert running.hosted_loop.is_closed()
