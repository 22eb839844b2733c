"""The checkpoint API of durable endpoints (`POST /v1/checkpoint`, `.../{run_id}/steps`), on
each store: a run an app starts itself, its steps stored once each, its output, and every bad
request a 4xx naming the problem (authentication first)."""

from __future__ import annotations

from typing import Any

from durable_core.signing import hashed_signing_key

from .test_api import KEY, error_of, standalone

EVENT = {
    "name": "inngest/http.request",
    "data": {"domain": "http://app.test:3000", "path": "/api/report", "method": "GET"},
}


def _step(step_id: str, data: Any, op: str = "StepRun") -> dict[str, Any]:
    return {
        "id": step_id,
        "op": op,
        "name": step_id,
        "displayName": f"step {step_id}",
        "data": data,
    }


def test_a_run_started_in_the_app_is_stored_with_its_steps_and_output(database_url: str) -> None:
    with standalone(database_url) as client:
        body = {"run_id": "01RUN", "event": EVENT, "steps": [_step("a", 1)], "ts": 1}
        for _ in range(2):  # a checkpoint sent again changes nothing
            res = client.post("/v1/checkpoint", json=body)
            assert res.status_code == 200, res.text
        data = res.json()["data"]
        assert data["run_id"] == "01RUN" and data["realtime_token"], data
        assert (data["app_id"], data["fn_id"]) == ("app.test:3000", "app.test:3000/api/report")
        assert client.get("/v1/runs/01RUN").json()["status"] == "running"

        more = {"fn_id": data["fn_id"], "steps": [_step("a", 1), _step("b", {"x": 2})]}
        for _ in range(2):
            assert client.post("/v1/checkpoint/01RUN/steps", json=more).status_code == 200
        failed = {"id": "c", "op": "StepFailed", "name": "c", "error": {"message": "no"}}
        complete = {"id": "done", "op": "RunComplete", "data": {"status": 200, "body": "{}"}}
        res = client.post("/v1/checkpoint/01RUN/steps", json={"steps": [failed, complete]})
        assert res.status_code == 200, res.text
        run = client.get("/v1/runs/01RUN").json()
        assert run["status"] == "completed", run
        assert run["output"] == {"status": 200, "body": "{}"}
        assert run["function_id"] == "app.test:3000/api/report"
        assert [(s["name"], s["op"], s["output"], s["error"]) for s in run["steps"]] == [
            ("step a", "StepRun", 1, None),
            ("step b", "StepRun", {"x": 2}, None),
            ("c", "StepFailed", None, {"message": "no"}),
        ]
        # Listed with the others, and its end is an event like any run's.
        listed = client.get("/v1/runs", params={"function_id": run["function_id"]}).json()
        assert [r["run_id"] for r in listed["data"]] == ["01RUN"]
        finished = client.get("/v1/events", params={"name": "inngest/function.finished"})
        assert [e["data"]["run_id"] for e in finished.json()["data"]] == ["01RUN"]

        # The run has ended: its completion again is fine, a new step is not.
        assert client.post("/v1/checkpoint/01RUN/steps", json={"steps": [complete]}).is_success
        late = client.post("/v1/checkpoint/01RUN/steps", json={"steps": [_step("z", 0)]})
        assert "has ended" in error_of(late, 409)


def test_bad_checkpoints_are_refused_naming_the_problem(database_url: str) -> None:
    with standalone(database_url) as client:
        post = client.post
        assert "not valid JSON" in error_of(post("/v1/checkpoint", content=b"{"), 400)
        assert "run_id" in error_of(post("/v1/checkpoint", json={"event": EVENT}), 400)
        no_name = {"run_id": "r", "event": {"data": {}}}
        assert "name" in error_of(post("/v1/checkpoint", json=no_name), 400)
        sleep = {"run_id": "r", "event": EVENT, "steps": [{"id": "s", "op": "Sleep"}]}
        assert "'Sleep' cannot be checkpointed" in error_of(post("/v1/checkpoint", json=sleep), 400)
        big = {"run_id": "r", "event": EVENT, "steps": [_step("s", 2**60)]}
        problem = error_of(post("/v1/checkpoint", json=big), 400)
        assert "steps[0].data" in problem and "2^53" in problem, problem
        # The SDK's own timings are nanoseconds past 2^53: read, not stored.
        timed = {"run_id": "r", "event": EVENT, "steps": [{**_step("s", 1), "timing": 2**60}]}
        assert post("/v1/checkpoint", json=timed).status_code == 200
        long_id = {"run_id": "x" * 200, "event": EVENT}
        assert "run_id" in error_of(post("/v1/checkpoint", json=long_id), 400)
        other = {"run_id": "r", "event": {**EVENT, "data": {"path": "/elsewhere"}}}
        assert "another function" in error_of(post("/v1/checkpoint", json=other), 409)
        assert "no run" in error_of(post("/v1/checkpoint/nope/steps", json={"steps": []}), 404)
        assert "steps" in error_of(post("/v1/checkpoint/r/steps", json={}), 400)
        assert "NUL" in error_of(post("/v1/checkpoint/a%00b/steps", json={"steps": []}), 400)


def test_checkpoints_need_the_signing_key_before_the_body_is_read(database_url: str) -> None:
    good = {"authorization": f"Bearer {hashed_signing_key(KEY)}"}
    with standalone(database_url, signing_key=KEY) as client:
        for path in ("/v1/checkpoint", "/v1/checkpoint/r/steps"):
            assert "Authorization" in error_of(client.post(path, content=b"{"), 401)
        body = {"run_id": "r", "event": EVENT, "steps": [_step("s", 1)]}
        assert client.post("/v1/checkpoint", json=body, headers=good).status_code == 200
