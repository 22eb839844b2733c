"""Our orchestrator (`durable dev`) drives an app written with the unmodified `inngest` SDK.

The app (`inngest_app.py`) and the orchestrator are real subprocesses talking HTTP on
127.0.0.1; the app syncs by PUT, events go to POST /e/<key>, and every run is checked through
the orchestrator's API (GET /v1/runs, /v1/runs/{id}).
"""

from __future__ import annotations

import hashlib
import itertools
import uuid
from typing import Any

from .conftest import FINISHED, Peer


def _tag() -> str:
    return uuid.uuid4().hex


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _steps(run: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [s for s in run["steps"] if s["name"] == name]


def test_step_run_with_a_reused_id(peer: Peer) -> None:
    tag = _tag()
    peer.send({"name": "peer/loop", "data": {"tag": tag}})
    run = peer.one_run("peer-loop", tag=tag)
    assert run["status"] == "completed", run
    assert run["output"] == [100, 101, 102]
    items = _steps(run, "item")
    assert len(items) == 3, run["steps"]
    assert {s["id"] for s in items} == {_sha1("item"), _sha1("item:1"), _sha1("item:2")}
    assert all(s["op"] == "StepRun" for s in items), items
    assert sorted(s["output"] for s in items) == [100, 101, 102]


def test_sleep(peer: Peer) -> None:
    tag = _tag()
    peer.send({"name": "peer/sleep", "data": {"tag": tag}})
    run = peer.one_run("peer-sleep", tag=tag)
    assert run["status"] == "completed", run
    assert run["output"] == {"before": "dozing", "after": "awake"}
    [nap] = _steps(run, "nap")
    assert nap["op"] == "Sleep"
    assert nap["ended_at"] is not None, nap


def test_wait_for_event_matched_by_expression_or_timed_out(peer: Peer) -> None:
    matched, timed_out = f"A-{_tag()}", f"B-{_tag()}"
    peer.send(
        {"name": "peer/wait", "data": {"order": matched, "timeout_s": 60}},
        {"name": "peer/wait", "data": {"order": timed_out, "timeout_s": 2}},
    )
    waiting = peer.one_run("peer-wait", status={"waiting"}, order=matched)
    # (Its 2 s timeout may already have passed on a slow machine; the check below still holds.)
    peer.one_run("peer-wait", status={"waiting", "completed"}, order=timed_out)

    # Same event name, but `async.data.order == event.data.order` is false for both runs.
    peer.send({"name": "peer/approved", "data": {"order": f"C-{_tag()}", "by": "mallory"}})
    assert peer.run(waiting["run_id"])["status"] == "waiting"
    peer.send({"name": "peer/approved", "data": {"order": matched, "by": "alice"}})

    run = peer.one_run("peer-wait", order=matched)
    assert run["status"] == "completed", run
    assert run["output"] == {
        "order": matched,
        "approved": {"name": "peer/approved", "by": "alice"},
    }
    [approval] = _steps(run, "approval")
    assert approval["op"] == "WaitForEvent"

    run = peer.one_run("peer-wait", order=timed_out)
    assert run["status"] == "completed", run
    assert run["output"] == {"order": timed_out, "approved": None}


def test_send_event_triggers_another_function(peer: Peer) -> None:
    token = _tag()
    peer.send({"name": "peer/sender", "data": {"token": token}})
    run = peer.one_run("peer-sender", token=token)
    assert run["status"] == "completed", run
    ids = run["output"]["ids"]
    assert isinstance(ids, list) and len(ids) == 1 and isinstance(ids[0], str), run["output"]

    target = peer.one_run("peer-sent", token=token)
    assert target["status"] == "completed", target
    assert target["output"] == {"token": token, "event_id": ids[0]}
    assert target["event"]["name"] == "peer/sent"


def test_invoke_returns_the_child_output(peer: Peer) -> None:
    n = uuid.uuid4().int % 1000
    tag = _tag()
    peer.send({"name": "peer/invoker", "data": {"n": n, "tag": tag}})
    run = peer.one_run("peer-invoker", tag=tag)
    assert run["status"] == "completed", run
    assert run["output"] == {"child": {"doubled": 2 * n}}
    [call] = _steps(run, "call-child")
    assert call["op"] == "InvokeFunction"

    children = [r for r in peer.runs("peer-child") if r["parent_run_id"] == run["run_id"]]
    assert len(children) == 1, children
    assert children[0]["status"] == "completed"
    assert children[0]["output"] == {"doubled": 2 * n}
    assert children[0]["event"]["data"] == {"n": n}


def test_group_parallel(peer: Peer) -> None:
    tag = _tag()
    peer.send({"name": "peer/parallel", "data": {"tag": tag}})
    run = peer.one_run("peer-parallel", tag=tag)
    assert run["status"] == "completed", run
    assert run["output"] == {"pair": ["L", "R"], "joined": "L+R"}
    for name, output in [("left", "L"), ("right", "R"), ("join", "L+R")]:
        [step] = _steps(run, name)
        assert (step["op"], step["output"]) == ("StepRun", output), step


def test_retry_after_error_then_success(peer: Peer) -> None:
    tag = _tag()
    peer.send({"name": "peer/retry", "data": {"tag": tag}})
    run = peer.one_run("peer-retry", tag=tag)
    assert run["status"] == "completed", run
    assert run["output"] == {"flaky": "ready on attempt 1"}
    flaky = [s for s in _steps(run, "flaky") if s["op"] == "StepRun"]
    assert len(flaky) == 1, run["steps"]
    assert flaky[0]["attempt"] == 1, flaky
    assert flaky[0]["output"] == "ready on attempt 1"


def test_non_retriable_error_fails_the_run_and_runs_on_failure(peer: Peer) -> None:
    tag = _tag()
    peer.send({"name": "peer/doomed", "data": {"tag": tag}})
    run = peer.one_run("peer-doomed", tag=tag)
    assert run["status"] == "failed", run
    assert run["output"] is None
    assert run["error"]["name"] == "NonRetriableError", run["error"]
    assert run["error"]["message"] == "card declined for good"

    failure = peer.until(
        "the on_failure run",
        lambda: next(
            (
                r
                for r in peer.runs("peer-doomed-failure", run_id=run["run_id"])
                if r["status"] in {"completed", "failed", "cancelled"}
            ),
            None,
        ),
    )
    assert failure["status"] == "completed", failure
    assert failure["output"] == {
        "event": "inngest/function.failed",
        "function_id": "peer-doomed",
        "run_id": run["run_id"],
        "error": run["error"],
        "original_event": "peer/doomed",
    }


def test_batched_events_reach_one_run_as_ctx_events(peer: Peer) -> None:
    tag = _tag()
    peer.send(*({"name": "peer/batched", "data": {"tag": tag, "n": n}} for n in (1, 2, 3)))
    run = peer.one_run("peer-batched", tag=tag)
    assert run["status"] == "completed", run
    assert run["output"] == [1, 2, 3]


def test_a_concurrency_key_runs_one_request_at_a_time(peer: Peer) -> None:
    tag = _tag()
    peer.send(*({"name": "peer/serial", "data": {"tag": tag, "n": n}} for n in range(4)))
    runs = peer.until(
        "four finished serial runs",
        lambda: (
            rows
            if len(
                rows := [r for r in peer.runs("peer-serial", tag=tag) if r["status"] in FINISHED]
            )
            == 4
            else None
        ),
    )
    spans = sorted(tuple(peer.run(r["run_id"])["output"]) for r in runs)
    assert all(r["status"] == "completed" for r in runs), runs
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"two runs with one key overlapped: {spans}"


def test_cancel_on_an_event_cancels_the_sleeping_run(peer: Peer) -> None:
    tag = _tag()
    peer.send({"name": "peer/cancellable", "data": {"tag": tag}})
    sleeping = peer.one_run("peer-cancellable", status={"sleeping"}, tag=tag)
    peer.send({"name": "peer/stop", "data": {"tag": _tag()}})  # another tag: no effect
    [stop_id] = peer.send({"name": "peer/stop", "data": {"tag": tag}})
    run = peer.one_run("peer-cancellable", tag=tag)
    assert run["run_id"] == sleeping["run_id"]
    assert run["status"] == "cancelled", run
    assert run["reason"] == f'cancelled by event "peer/stop" (id {stop_id})', run


def test_run_limits_apply_to_an_app_that_checks_none(peer: Peer) -> None:
    """The inngest SDK registers no limits and checks none: the orchestrator's defaults apply."""
    small, big = _tag(), _tag()
    peer.send(
        {"name": "peer/bulky", "data": {"tag": small, "size": 1000}},
        {"name": "peer/bulky", "data": {"tag": big, "size": 5 * 1024 * 1024}},
    )
    run = peer.one_run("peer-bulky", tag=small)
    assert (run["status"], run["output"]) == ("completed", 1000)
    run = peer.one_run("peer-bulky", tag=big)
    assert run["status"] == "failed", run
    assert run["error"]["name"] == "LimitExceededError"
    assert (
        "the output of step 'blob' is 5.0 MB as JSON, over the step_output limit of 4 MB"
        in (run["error"]["message"])
    )
    [blob] = _steps(run, "blob")
    assert (blob["output"], blob["attempt"]) == (None, 0)
