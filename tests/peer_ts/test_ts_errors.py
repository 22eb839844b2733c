"""The TypeScript SDK's errors, signals and flow control on our orchestrator, with its
checkpointing on and off; and its durable endpoints (runs started inside the app)."""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import uuid
from typing import Any

import httpx

from .conftest import FINISHED, TsPeer


def _tag() -> str:
    return uuid.uuid4().hex[:12]


def _at(text: str) -> _dt.datetime:
    return _dt.datetime.fromisoformat(text)


def _start(peer: TsPeer, name: str, mode: str, **data: Any) -> dict[str, Any]:
    tag = _tag()
    peer.send({"name": f"ts/{name}.{mode}", "data": {"tag": tag, **data}})
    return peer.one_run(f"peer-ts-{name}-{mode}", tag=tag)


def test_a_step_that_fails_twice_then_succeeds(peer_ts: TsPeer, mode: str) -> None:
    run = _start(peer_ts, "flaky", mode)
    assert run["status"] == "completed", run
    assert run["output"] == {"succeededOn": 2}
    attempts = [s for s in run["steps"] if s["name"] == "flaky"]
    assert [s["op"] for s in attempts] == ["StepError", "StepError", "StepRun"], attempts
    assert "failing on attempt 0" in attempts[0]["error"]["message"]


def test_retry_after_error_delays_the_retry(peer_ts: TsPeer, mode: str) -> None:
    run = _start(peer_ts, "later", mode)
    assert run["status"] == "completed", run
    assert run["output"] == {"succeededOn": 1}
    failed, ran = [s for s in run["steps"] if s["name"] == "later"]
    assert (failed["op"], ran["op"]) == ("StepError", "StepRun"), run["steps"]
    # --fast-retries would retry after 50 ms: the error's 3 s are honoured instead.
    assert _at(ran["started_at"]) >= _at(failed["ended_at"]) + _dt.timedelta(seconds=3)


def test_non_retriable_error_fails_the_run_and_runs_on_failure(peer_ts: TsPeer, mode: str) -> None:
    run = _start(peer_ts, "doomed", mode)
    assert run["status"] == "failed", run
    assert run["error"]["message"] == "no point retrying", run
    fatal = [s for s in run["steps"] if s["name"] == "fatal"]
    assert len(fatal) == 1, run["steps"]  # not retried, though the function allows 3 retries
    failure = peer_ts.until(
        "the onFailure run",
        lambda: next(
            (
                r
                for r in peer_ts.get("/v1/runs", function_id=f"peer-ts-doomed-{mode}-failure")[
                    "data"
                ]
                if r["status"] in FINISHED and r["event"]["data"].get("run_id") == run["run_id"]
            ),
            None,
        ),
    )
    assert failure["status"] == "completed", failure
    tag = run["event"]["data"]["tag"]
    assert failure["output"] == {
        "failedRun": run["run_id"],
        "message": "no point retrying",
        "tag": tag,
    }


def test_wait_for_signal_resumes_with_the_signal_sent_through_the_api(
    peer_ts: TsPeer, mode: str
) -> None:
    tag = signal = _tag()
    peer_ts.send({"name": f"ts/signal.{mode}", "data": {"tag": tag, "signal": signal}})
    fn_id = f"peer-ts-signal-{mode}"
    waiting = peer_ts.one_run(fn_id, status={"waiting"}, tag=tag)
    res = peer_ts.http.post("/v1/signals", json={"signal": signal, "data": {"go": 1}})
    assert res.status_code == 200, res.text
    assert res.json()["run_id"] == waiting["run_id"]
    run = peer_ts.one_run(fn_id, tag=tag)
    assert run["status"] == "completed", run
    assert run["output"] == {"data": {"go": 1}}


def test_wait_for_signal_resumes_with_a_signal_another_function_sends(
    peer_ts: TsPeer, mode: str
) -> None:
    tag = signal = _tag()
    peer_ts.send({"name": f"ts/signal.{mode}", "data": {"tag": tag, "signal": signal}})
    waiting = peer_ts.one_run(f"peer-ts-signal-{mode}", status={"waiting"}, tag=tag)
    sender = _start(peer_ts, "signaller", mode, signal=signal)
    assert sender["status"] == "completed", sender
    assert sender["output"] == {"runId": waiting["run_id"]}
    run = peer_ts.one_run(f"peer-ts-signal-{mode}", tag=tag)
    assert run["status"] == "completed", run
    assert run["output"] == {"data": {"from": "signaller"}}


def test_concurrency_limit_runs_one_at_a_time(peer_ts: TsPeer, mode: str) -> None:
    [fn] = [
        f
        for f in peer_ts.get("/v1/functions")["data"]
        if f["function_id"] == f"peer-ts-serial-{mode}"
    ]
    assert fn["config"]["concurrency"] == [{"limit": 1}]
    tag = _tag()
    peer_ts.send(*({"name": f"ts/serial.{mode}", "data": {"tag": tag, "n": n}} for n in range(3)))

    def finished() -> list[dict[str, Any]] | None:
        rows = [r for r in peer_ts.runs(f"peer-ts-serial-{mode}", tag=tag)]
        done = [r for r in rows if r["status"] in FINISHED]
        return done if len(done) == 3 else None

    runs = peer_ts.until("three finished runs", finished)
    assert all(r["status"] == "completed" for r in runs), runs
    spans = sorted(peer_ts.run(r["run_id"])["output"][:2] for r in runs)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"two runs of a function with concurrency 1 overlapped: {spans}"


def test_rate_limit_and_throttle_arrive_and_apply(peer_ts: TsPeer, mode: str) -> None:
    [fn] = [
        f
        for f in peer_ts.get("/v1/functions")["data"]
        if f["function_id"] == f"peer-ts-limited-{mode}"
    ]
    assert fn["config"]["rateLimit"] == {"limit": 1, "period": "60s", "key": "event.data.tag"}
    assert fn["config"]["throttle"] == {"limit": 5, "period": "1s"}
    tag = _tag()
    peer_ts.send(*({"name": f"ts/limited.{mode}", "data": {"tag": tag, "n": n}} for n in range(3)))
    fn_id = f"peer-ts-limited-{mode}"
    runs = peer_ts.until(
        "one run and two skipped",
        lambda: (
            rows
            if len(
                rows := [
                    r for r in peer_ts.runs(fn_id, tag=tag) if r["status"] in FINISHED | {"skipped"}
                ]
            )
            == 3
            else None
        ),
    )
    statuses = sorted(r["status"] for r in runs)
    assert statuses == ["completed", "skipped", "skipped"], runs


def test_durable_endpoint_run_is_stored_with_its_steps(peer_ts: TsPeer) -> None:
    res = httpx.get(f"{peer_ts.app_url}/endpoint", params={"n": 4}, timeout=30)
    assert res.status_code == 200, res.text
    assert res.json() == {"a": 5, "b": 10}
    runs = peer_ts.get("/v1/runs", limit=1000)["data"]
    mine = [
        r
        for r in runs
        if (r["event"] or {}).get("name") == "inngest/http.request"
        and "n=4" in ((r["event"] or {}).get("data") or {}).get("query_params", "")
    ]
    assert len(mine) == 1, runs
    run = peer_ts.run(mine[0]["run_id"])
    assert run["status"] == "completed", run
    names = [s["name"] for s in run["steps"] if s["op"] == "StepRun"]
    assert names == ["first", "second"], run["steps"]
    assert [s["output"] for s in run["steps"] if s["op"] == "StepRun"] == [5, 10]
    # The output is the HTTP response the endpoint answered with.
    assert run["output"]["status"] == 200, run
    assert json.loads(run["output"]["body"]) == {"a": 5, "b": 10}


def test_checkpoint_api_refuses_bad_bodies_and_unknown_runs(peer_ts: TsPeer) -> None:
    http = peer_ts.http
    res = http.post("/v1/checkpoint", content=b"[1")
    assert res.status_code == 400 and "not valid JSON" in res.json()["error"], res.text
    res = http.post("/v1/checkpoint", json={"event": {"name": "inngest/http.request"}})
    assert res.status_code == 400 and "run_id" in res.json()["error"], res.text
    event = {"name": "inngest/http.request", "data": {"domain": "http://a.test", "path": "/x"}}
    step = {"id": "s1", "op": "Sleep", "name": "2s"}
    res = http.post("/v1/checkpoint", json={"run_id": _tag(), "event": event, "steps": [step]})
    assert res.status_code == 400 and "'Sleep' cannot be checkpointed" in res.text, res.text
    res = http.post(f"/v1/checkpoint/{_tag()}/steps", json={"steps": []})
    assert res.status_code == 404, res.text


def test_checkpoint_api_stores_each_step_once(peer_ts: TsPeer) -> None:
    run_id = _tag()
    event = {"name": "inngest/http.request", "data": {"domain": "http://a.test", "path": "/x"}}
    step = {"id": "s1", "op": "StepRun", "name": "one", "data": 1}
    body = {"run_id": run_id, "event": event, "steps": [step]}
    for _ in range(2):  # sent again (a retried checkpoint): nothing changes
        res = peer_ts.http.post("/v1/checkpoint", json=body)
        assert res.status_code == 200, res.text
        assert res.json()["data"]["run_id"] == run_id
    fn_id = res.json()["data"]["fn_id"]
    again = {"steps": [step, {"id": "s2", "op": "StepRun", "name": "two", "data": 2}]}
    for _ in range(2):
        res = peer_ts.http.post(f"/v1/checkpoint/{run_id}/steps", json=again)
        assert res.status_code == 200, res.text
    done = {"steps": [{"id": "c", "op": "RunComplete", "data": {"status": 200, "body": "3"}}]}
    res = peer_ts.http.post(f"/v1/checkpoint/{run_id}/steps", json=done)
    assert res.status_code == 200, res.text
    run = peer_ts.run(run_id)
    assert (run["status"], run["function_id"]) == ("completed", fn_id), run
    assert [(s["name"], s["output"]) for s in run["steps"]] == [("one", 1), ("two", 2)]
    late = {"steps": [{"id": "s3", "op": "StepRun", "name": "three", "data": 3}]}
    res = peer_ts.http.post(f"/v1/checkpoint/{run_id}/steps", json=late)
    assert res.status_code == 409 and "has ended" in res.json()["error"], res.text
