"""The TypeScript SDK's step kinds on our orchestrator, with its checkpointing on and off.

Each test triggers a function of the node app (`app.js`) through our API and asserts what a
user sees: the run's status, its output, and its steps in `/v1/runs/{id}`.
"""

from __future__ import annotations

import datetime as _dt
import uuid
from typing import Any

from .conftest import FUNCTION_IDS, TsPeer


def _tag() -> str:
    return uuid.uuid4().hex[:12]


def _steps(run: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [s for s in run["steps"] if s["name"] == name]


def _start(peer: TsPeer, name: str, mode: str, **data: Any) -> dict[str, Any]:
    """Send `ts/<name>.<mode>` with `data` (and a fresh tag); the run once it has finished."""
    tag = _tag()
    peer.send({"name": f"ts/{name}.{mode}", "data": {"tag": tag, **data}})
    return peer.one_run(f"peer-ts-{name}-{mode}", tag=tag)


def test_sync_registers_every_function(peer_ts: TsPeer) -> None:
    functions = peer_ts.get("/v1/functions")["data"]
    assert {f["function_id"] for f in functions} == FUNCTION_IDS
    [app] = [a for a in peer_ts.get("/v1/apps")["data"] if a["app_id"] == "peer-ts"]
    assert app["sdk"].startswith("js:v4."), app
    # The orchestrator logs the sync after it stored the functions: wait for the line.
    line = f"synced {peer_ts.app_url}/api/inngest"
    peer_ts.until(
        f"the log line {line!r}", lambda: line in peer_ts.processes[1].log.read_text() or None
    )


def test_step_run_in_a_loop(peer_ts: TsPeer, mode: str) -> None:
    run = _start(peer_ts, "loop", mode, count=4)
    assert run["status"] == "completed", run
    assert run["output"] == [0, 10, 20, 30]
    items = [s for s in _steps(run, "item") if s["op"] == "StepRun"]
    assert sorted(s["output"] for s in items) == [0, 10, 20, 30], run["steps"]


def test_sync_and_async_handlers(peer_ts: TsPeer, mode: str) -> None:
    run = _start(peer_ts, "plain", mode, n=21)
    assert run["status"] == "completed", run
    assert run["output"] == {"doubled": 42}
    run = _start(peer_ts, "async", mode, n=4)
    assert run["status"] == "completed", run
    assert run["output"] == {"a": 5, "b": 15}


def test_sleep(peer_ts: TsPeer, mode: str) -> None:
    run = _start(peer_ts, "sleep", mode)
    assert run["status"] == "completed", run
    assert run["output"] == ["dozing", "awake"]
    [nap] = _steps(run, "nap")
    assert nap["op"] == "Sleep"
    started = _dt.datetime.fromisoformat(nap["started_at"])
    [after] = [s for s in _steps(run, "after") if s["op"] == "StepRun"]
    # The step after the sleep runs once the 2 s have passed, not before.
    assert _dt.datetime.fromisoformat(after["ended_at"]) >= started + _dt.timedelta(seconds=2)


def test_sleep_until(peer_ts: TsPeer, mode: str) -> None:
    until = _dt.datetime.now(_dt.UTC) + _dt.timedelta(seconds=2)
    run = _start(peer_ts, "sleep-until", mode, until=until.isoformat())
    assert run["status"] == "completed", run
    assert run["output"] == "rang"
    [after] = [s for s in _steps(run, "after") if s["op"] == "StepRun"]
    assert _dt.datetime.fromisoformat(after["ended_at"]) >= until


def test_wait_for_event_matched_or_timed_out(peer_ts: TsPeer, mode: str) -> None:
    key, tag = _tag(), _tag()
    peer_ts.send({"name": f"ts/wait.{mode}", "data": {"tag": tag, "key": key, "timeout": "60s"}})
    fn_id = f"peer-ts-wait-{mode}"
    peer_ts.one_run(fn_id, status={"waiting"}, tag=tag)
    peer_ts.send({"name": f"ts/reply.{mode}", "data": {"key": "another", "answer": "no"}})
    peer_ts.send({"name": f"ts/reply.{mode}", "data": {"key": key, "answer": "yes"}})
    run = peer_ts.one_run(fn_id, tag=tag)
    assert run["status"] == "completed", run
    assert run["output"] == {"got": "yes"}

    run = _start(peer_ts, "wait", mode, key=_tag(), timeout="2s")
    assert run["status"] == "completed", run
    assert run["output"] == {"timedOut": True}


def test_send_event_triggers_another_function(peer_ts: TsPeer, mode: str) -> None:
    token = _tag()
    run = _start(peer_ts, "sender", mode, token=token)
    assert run["status"] == "completed", run
    assert run["output"] == {"sent": 1}
    target = peer_ts.one_run(f"peer-ts-sent-{mode}", token=token)
    assert target["status"] == "completed", target
    assert target["output"] == {"token": token}


def test_invoke_returns_the_child_output(peer_ts: TsPeer, mode: str) -> None:
    run = _start(peer_ts, "invoker", mode, n=7)
    assert run["status"] == "completed", run
    assert run["output"] == {"result": 1007}
    [child] = peer_ts.runs(f"peer-ts-child-{mode}", n=7, slow=None)[:1] or [None]
    assert child is not None


def test_invoke_with_a_timeout_the_child_misses(peer_ts: TsPeer, mode: str) -> None:
    run = _start(peer_ts, "invoker", mode, n=1, slow=True, timeout="2s")
    assert run["status"] == "completed", run
    caught = run["output"]["caught"]
    assert "did not finish within" in caught, run
    assert "Unknown error" not in caught


def test_promise_all_runs_steps_in_parallel(peer_ts: TsPeer, mode: str) -> None:
    run = _start(peer_ts, "parallel", mode)
    assert run["status"] == "completed", run
    assert run["output"] == ["A", "B", "C"]
    for name in ("par-a", "par-b", "par-c"):
        ran = [s for s in _steps(run, name) if s["op"] == "StepRun"]
        assert len(ran) == 1, run["steps"]


def test_promise_race_goes_to_the_step_that_finished_first(peer_ts: TsPeer, mode: str) -> None:
    tag = _tag()
    peer_ts.send({"name": f"ts/race.{mode}", "data": {"tag": tag}})
    fn_id = f"peer-ts-race-{mode}"

    def early_done() -> dict[str, Any] | None:
        rows = peer_ts.runs(fn_id, tag=tag)
        run = peer_ts.run(rows[0]["run_id"]) if rows else None
        ran = run and [s for s in run["steps"] if s["name"] == "early" and s["op"] == "StepRun"]
        return run if ran else None

    peer_ts.until("the early step", early_done)
    peer_ts.send({"name": f"ts/race-go.{mode}", "data": {"tag": tag}})
    run = peer_ts.one_run(fn_id, tag=tag)
    assert run["status"] == "completed", run
    assert run["output"] == "early"
