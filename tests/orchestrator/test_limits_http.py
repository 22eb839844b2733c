"""Run limits over HTTP: a standalone orchestrator calling apps on loopback under uvicorn.

A fake app plays an SDK that checks nothing: its answers over a limit fail the run at once, and
an answer far longer than the orchestrator reads (100 MB) is dropped after the first
megabytes, unread. Our SDK refuses an output over the limit before it answers. `durable dev` takes the
limits as flags. Each test runs on both stores, except the `durable dev` one (SQLite)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from adapters.fastapi import Serve
from durable_core import Context, Durable, Limits, TriggerEvent
from durable_core.orchestrator.api import Api
from durable_core.orchestrator.service import Orchestrator
from durable_core.orchestrator.store import open_store

from .conftest import DEADLINE, FINISHED, UvicornApp, free_port, sqlite_only, wait_until
from .test_cli import Dev, durable_command

MB = 1024 * 1024
HUGE = 100 * MB
CHUNK = 64 * 1024


def step_run(step: str, data: Any) -> dict[str, Any]:
    return {"op": "StepRun", "id": step, "name": step, "displayName": step, "data": data}


class FakeApp:
    """An app that answers each function its own way and counts what it was asked and sent."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.sent = 0  # bytes of the huge answer handed to the server
        self.stream_ended = threading.Event()
        routes = [Route("/api/fake", self.execute, methods=["POST"])]
        self.server = UvicornApp(Starlette(routes=routes))

    def url(self, fn_id: str) -> str:
        return f"{self.server.base_url}/api/fake?fnId={fn_id}&stepId=step"

    async def execute(self, request: Request) -> Response:
        fn_id = request.query_params["fnId"]
        self.calls[fn_id] = self.calls.get(fn_id, 0) + 1
        body = await request.json()
        if fn_id.endswith("chunked") or fn_id.endswith("declared"):
            headers = {"content-length": str(HUGE + 64)} if fn_id.endswith("declared") else {}
            return StreamingResponse(self._huge(), status_code=206, headers=headers)
        if fn_id.endswith("error-page"):  # a 500 with a 100 MB page, as a broken proxy might
            headers = {"content-length": str(HUGE)}
            return StreamingResponse(self._huge(), status_code=500, headers=headers)
        if fn_id.endswith("big-output"):
            if body["steps"]:
                return JSONResponse(len(next(iter(body["steps"].values()))["data"]))
            return JSONResponse([step_run("big", "b" * (5 * MB))], status_code=206)
        if fn_id.endswith("counting"):  # one new 1-byte step per request, forever
            return JSONResponse([step_run(f"s{len(body['steps'])}", 1)], status_code=206)
        raise AssertionError(fn_id)

    async def _huge(self) -> AsyncIterator[bytes]:
        try:
            yield b'[{"op":"StepRun","id":"big","name":"big","data":"'
            chunk = b"x" * CHUNK
            while self.sent < HUGE:
                yield chunk
                self.sent += CHUNK
                await asyncio.sleep(0)  # where a hang-up reaches the app, as in any real one
            yield b'"}]'
        finally:
            self.stream_ended.set()


@pytest.fixture
def fake() -> Iterator[FakeApp]:
    app = FakeApp()
    app.server.start()
    yield app
    app.server.stop()


@contextlib.contextmanager
def orchestrator(database_url: str, **options: Any) -> Iterator[TestClient]:
    """The API of a standalone orchestrator (as `durable dev` serves it), started and stopped."""
    orch = Orchestrator(open_store(database_url), backoff=(0.05,), **options)

    with TestClient(Api(orch).served()) as client:
        yield client


def register(client: TestClient, fake: FakeApp, local_id: str, **extra: Any) -> str:
    fn_id = f"fake-{local_id}"
    step = {"id": "step", "name": "step", "retries": {"attempts": 3}}
    step["runtime"] = {"type": "http", "url": fake.url(fn_id)}
    config = {"id": fn_id, "triggers": [{"event": f"fake/{local_id}"}], "steps": {"step": step}}
    res = client.post("/fn/register", json={"appname": "fake", "functions": [{**config, **extra}]})
    assert res.status_code == 200, res.text
    assert client.post("/e/key", json={"name": f"fake/{local_id}"}).status_code == 200
    return fn_id


def finished_run(client: TestClient, fn_id: str) -> dict[str, Any]:
    def done() -> list[dict[str, Any]]:
        runs = client.get("/v1/runs", params={"function_id": fn_id}).json()["data"]
        return [r for r in runs if r["status"] in FINISHED]

    run = wait_until(f"the run of {fn_id} to finish", done)[0]
    return dict(client.get(f"/v1/runs/{run['run_id']}").json())


def failed_run(client: TestClient, fn_id: str) -> dict[str, Any]:
    full = finished_run(client, fn_id)
    assert full["status"] == "failed", full
    assert full["error"]["name"] == "LimitExceededError", full["error"]
    return dict(full)


@pytest.mark.parametrize("how", ["chunked", "declared"])
def test_an_answer_longer_than_the_bound_is_dropped_unread(
    how: str, fake: FakeApp, database_url: str
) -> None:
    with orchestrator(database_url) as client:
        fn_id = register(client, fake, how)
        run = failed_run(client, fn_id)
        assert run["error"]["message"].startswith(
            "the app's answer is over 9 MB (twice the step_output limit of 4 MB, plus 1 MB), "
            "so it was not read."
        )
        assert (
            "raise it for the function with limits=Limits(step_output=...)"
            in run["error"]["message"]
        )
        assert fake.calls == {fn_id: 1}  # failed at once: not retried
    # The connection was dropped: the app stopped streaming long before its 100 MB (what it
    # got to send is what was read, plus what the sockets buffer).
    wait_until("the app's stream to end", fake.stream_ended.is_set)
    assert fake.sent < HUGE // 2, fake.sent


def test_an_error_answer_longer_than_the_bound_is_retried_as_an_error(
    fake: FakeApp, database_url: str
) -> None:
    with orchestrator(database_url) as client:
        fn_id = register(client, fake, "error-page")
        run = finished_run(client, fn_id)
        assert run["status"] == "failed", run
        assert run["error"]["name"] == "AnswerTooLarge"
        assert run["error"]["message"] == (
            f"HTTP 500: the answer was longer than {9 * MB} bytes; not read"
        )
        assert fake.calls == {fn_id: 4}  # the first attempt and its 3 retries


def test_an_output_over_the_limit_from_another_sdk_is_not_stored(
    fake: FakeApp, database_url: str
) -> None:
    with orchestrator(database_url) as client:
        fn_id = register(client, fake, "big-output")
        run = failed_run(client, fn_id)
        message = run["error"]["message"]
        assert "the output of step 'big' is 5.0 MB as JSON, over the step_output limit" in message
        assert [(s["name"], s["output"], s["error"]["name"]) for s in run["steps"]] == [
            ("big", None, "LimitExceededError")
        ]
        assert fake.calls == {fn_id: 1}

        raised = register(client, fake, "raised-big-output", limits={"stepOutput": 6 * MB})
        run = finished_run(client, raised)
        assert (run["status"], run["output"]) == ("completed", 5 * MB)


def test_the_step_limit_of_a_function_config_reaches_the_orchestrator(
    fake: FakeApp, database_url: str
) -> None:
    with orchestrator(database_url, limits=Limits(steps=100)) as client:
        fn_id = register(client, fake, "counting", limits={"steps": 5})
        message = failed_run(client, fn_id)["error"]["message"]
        assert "the run reached 6 steps, over the steps limit of 5" in message
        assert fake.calls == {fn_id: 6}


@pytest.mark.parametrize(
    ("limits", "problem"),
    [
        ("lots", "limits must be an object"),
        ({"steps": 0}, "limits.steps must be a positive integer"),
        ({"stepOutput": "4MB"}, "limits.stepOutput must be a positive integer"),
        ({"outputs": 3}, "limits.outputs is not a limit"),
    ],
)
def test_bad_limits_in_a_function_config_are_refused(
    limits: Any, problem: str, fake: FakeApp, database_url: str
) -> None:
    with orchestrator(database_url) as client:
        step = {"id": "step", "name": "step", "runtime": {"type": "http", "url": fake.url("f")}}
        fn = {"id": "f", "triggers": [{"event": "e"}], "steps": {"step": step}, "limits": limits}
        res = client.post("/fn/register", json={"appname": "fake", "functions": [fn]})
        assert res.status_code == 400
        assert problem in res.json()["error"]


class AnswerSizes:
    """ASGI middleware: the size of every answer the app sends."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sizes: list[int] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        size = 0

        async def counting(message: Message) -> None:
            nonlocal size
            if message["type"] == "http.response.body":
                size += len(message.get("body", b""))
                if not message.get("more_body"):
                    self.sizes.append(size)
            await send(message)

        await self.app(scope, receive, counting)


def test_our_sdk_refuses_an_output_over_the_limit_before_answering(database_url: str) -> None:
    with orchestrator(database_url) as client:
        d = Durable("ours", dev=True, orchestrator_url=str(client.base_url))

        @d.function(id="big", trigger=TriggerEvent("ours/big"))
        async def big(ctx: Context) -> None:
            await ctx.step.run("big", lambda: "b" * (5 * MB))

        web = FastAPI()
        Serve(web, d, path="/api/durable")
        sizes = AnswerSizes(web)
        app = UvicornApp(sizes)
        app.start()
        try:
            configs = big.configs(f"{app.base_url}/api/durable")
            res = client.post("/fn/register", json={"appname": "ours", "functions": configs})
            assert res.status_code == 200, res.text
            assert client.post("/e/key", json={"name": "ours/big"}).status_code == 200
            message = failed_run(client, "ours-big")["error"]["message"]
        finally:
            app.stop()
    assert "the output of step 'big' is 5.0 MB as JSON, over the step_output limit" in message
    assert len(sizes.sizes) == 1 and sizes.sizes[0] < 16 * 1024, sizes.sizes


@sqlite_only
def test_durable_dev_takes_the_limits_as_flags(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    d = Durable("cli", dev=True, orchestrator_url=url)

    @d.function(id="out", trigger=TriggerEvent("cli/out"))
    async def out(ctx: Context) -> int:
        return len(await ctx.step.run("words", lambda: "w" * 3000))

    web = FastAPI()
    Serve(web, d, path="/api/durable")
    app = UvicornApp(web)
    app.start()
    log = tmp_path / "dev.log"
    app_url = f"{app.base_url}/api/durable"
    args = ["dev", "--port", str(port), "--db", str(tmp_path / "dev.db"), "-u", app_url]
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [*durable_command(), *args, "--max-step-output", "2KB"], stdout=sink, stderr=sink
        )
    server = Dev(url, log)
    try:
        wait_until("the app to sync", lambda: f"synced {app_url}" in log.read_text(), DEADLINE * 2)
        assert httpx.post(f"{url}/e/key", json={"name": "cli/out"}).status_code == 200
        run_id = wait_until("a run", lambda: server.runs("cli-out"))[0]["run_id"]
        run = server.wait_status(run_id, "failed", "completed")
        assert run["status"] == "failed", run
        assert "over the step_output limit of 2 KB" in run["error"]["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=DEADLINE)
        app.stop()
    bad = subprocess.run(
        [*durable_command(), "dev", "--max-step-output", "lots"],
        capture_output=True,
        text=True,
        timeout=DEADLINE * 3,
        check=False,
    )
    assert bad.returncode != 0 and "invalid size 'lots'" in bad.stderr
