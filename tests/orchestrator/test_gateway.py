"""`step.ai.infer` and `step.fetch`: the orchestrator makes the request while the run holds
no worker, retries it like a step, and resumes the run with the answer. Our SDK in embedded
mode (both stores), and the ops as other SDKs send them."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from adapters.fastapi import Serve
from durable_core import (
    Context,
    Durable,
    Limits,
    StepError,
    SyncContext,
    TriggerEvent,
    WorkflowContext,
)
from durable_core._limits import RunLimits, Usage
from durable_core.orchestrator import gateway
from durable_core.orchestrator.gateway import GatewayClient

from .conftest import Harness, StartFactory, UvicornApp, wait_until
from .fake_model import API_KEY, FakeModel

CHAT = "/v1/chat/completions"


@pytest.fixture
def model() -> Iterator[FakeModel]:
    fake = FakeModel().start()
    yield fake
    fake.stop()


def chat(question: str, model: str | None = "gpt-test") -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": question}]}
    if model:
        body["model"] = model
    return body


def ask_app(model: FakeModel, *, retries: int = 3, limits: Limits | None = None) -> Durable:
    """`ask`: one step, the model call, one more step; the event's data picks the key and
    whether the body names a model. A step error is caught and returned."""
    d = Durable("t", dev=True)
    url = model.url + CHAT

    @d.function(id="ask", trigger=TriggerEvent("t/ask"), retries=retries, limits=limits)
    async def ask(ctx: Context) -> dict[str, Any]:
        data = ctx.event.data
        before = await ctx.step.run("before", lambda: "ready")
        try:
            answer = await ctx.step.ai.infer(
                "ask-model",
                url=url,
                auth_key=data.get("key", API_KEY),
                body=chat(data["q"], data.get("model", "gpt-test")),
            )
        except StepError as err:
            return {"failed": err.name, "message": err.message}
        content = answer["choices"][0]["message"]["content"]
        after = await ctx.step.run("after", lambda: content.upper())
        return {"before": before, "content": content, "after": after}

    return d


def finished(h: Harness, local_id: str = "ask") -> dict[str, Any]:
    run = h.only_run(local_id)
    assert run["status"] in ("completed", "failed"), run
    return run


def test_ai_infer_calls_the_model_and_the_run_resumes_with_its_answer(
    model: FakeModel, embedded: StartFactory
) -> None:
    h = embedded(ask_app(model))
    h.send("t/ask", {"q": "hi"})
    run = finished(h)
    assert run["status"] == "completed", run
    assert run["output"] == {"before": "ready", "content": "echo: hi", "after": "ECHO: HI"}
    [call] = model.calls(CHAT)
    assert call.headers["authorization"] == f"Bearer {API_KEY}"
    assert call.headers["content-type"] == "application/json"
    assert call.json() == chat("hi")
    steps = {s["name"]: s for s in run["steps"]}
    assert steps["ask-model"]["op"] == "AIGateway", steps


def test_ai_infer_in_a_sync_function(model: FakeModel, embedded: StartFactory) -> None:
    d = Durable("t", dev=True)

    @d.function(id="ask", trigger=TriggerEvent("t/ask"))
    def ask(ctx: SyncContext) -> str:
        answer = ctx.step.ai.infer(
            "ask-model", url=model.url + CHAT, auth_key=API_KEY, body=chat("sync")
        )
        return str(answer["choices"][0]["message"]["content"])

    h = embedded(d, server="uvicorn")
    h.send("t/ask")
    run = finished(h)
    assert run["status"] == "completed", run
    assert run["output"] == "echo: sync"


@pytest.mark.parametrize("failures", [[500, 502], [429]])
def test_a_model_that_fails_with_5xx_or_429_is_asked_again(
    failures: list[int], model: FakeModel, embedded: StartFactory
) -> None:
    model.fail = list(failures)
    model.retry_after = "0"
    h = embedded(ask_app(model))
    h.send("t/ask", {"q": "again"})
    run = finished(h)
    assert run["output"] == {"before": "ready", "content": "echo: again", "after": "ECHO: AGAIN"}
    assert len(model.calls(CHAT)) == len(failures) + 1


def test_when_retries_run_out_the_step_fails_with_the_last_error(
    model: FakeModel, embedded: StartFactory
) -> None:
    model.fail = [500] * 10
    h = embedded(ask_app(model, retries=1))
    h.send("t/ask", {"q": "never"})
    run = finished(h)
    assert run["output"]["failed"] == "GatewayError", run
    assert "answered 500" in run["output"]["message"]
    assert "gave up after 2 attempts" in run["output"]["message"]
    assert len(model.calls(CHAT)) == 2


@pytest.mark.parametrize(
    ("data", "status"),
    [({"q": "x", "model": None}, 400), ({"q": "x", "key": "sk-wrong"}, 401)],
    ids=["bad-request", "wrong-key"],
)
def test_a_4xx_from_the_model_fails_the_step_without_a_retry(
    data: dict[str, Any], status: int, model: FakeModel, embedded: StartFactory
) -> None:
    h = embedded(ask_app(model))
    h.send("t/ask", data)
    run = finished(h)
    assert run["status"] == "completed", run
    assert run["output"]["failed"] == "GatewayError", run
    assert f"answered {status}" in run["output"]["message"], run
    assert len(model.calls(CHAT)) == 1, "a 4xx was retried"


def test_an_answer_over_the_step_output_limit_fails_the_step(
    model: FakeModel, embedded: StartFactory
) -> None:
    model.big = 64 * 1024
    h = embedded(ask_app(model, limits=Limits(step_output="16KB")))
    h.send("t/ask", {"q": "big"})
    run = finished(h)
    assert run["status"] == "completed", run
    assert run["output"]["failed"] == "LimitExceededError", run
    assert "step_output limit" in run["output"]["message"]
    assert len(model.calls(CHAT)) == 1


def test_an_uncaught_step_failure_fails_the_run(model: FakeModel, embedded: StartFactory) -> None:
    d = Durable("t", dev=True)

    @d.function(id="ask", trigger=TriggerEvent("t/ask"), retries=1)
    async def ask(ctx: Context) -> Any:
        return await ctx.step.ai.infer("ask-model", url=model.url + CHAT, body=chat("no key"))

    h = embedded(d)
    h.send("t/ask")
    run = finished(h)
    assert run["status"] == "failed", run
    assert "answered 401" in run["error"]["message"], run
    assert len(model.calls(CHAT)) == 1


def test_a_model_call_takes_no_dispatch_slot(model: FakeModel) -> None:
    """With room for one request at a time, another run goes on while the model thinks."""
    d = ask_app(model)

    @d.function(id="quick", trigger=TriggerEvent("t/quick"))
    async def quick(ctx: Context) -> int:
        return await ctx.step.run("one", lambda: 1) + await ctx.step.run("two", lambda: 2)

    app = FastAPI()
    serve = Serve(app, d)
    assert serve.embedded is not None
    serve.embedded.concurrency = 1
    model.hold = threading.Event()
    with TestClient(app) as client:
        h = Harness(client, d)
        h.send("t/ask", {"q": "slow"})
        wait_until("the model to be asked", lambda: model.calls(CHAT))
        h.send("t/quick")
        assert h.only_run("quick")["output"] == 3
        assert h.runs("ask")[0]["status"] == "waiting"
        model.hold.set()
        assert h.only_run("ask")["output"]["content"] == "echo: slow"


async def test_a_model_that_does_not_answer_in_time_is_a_retriable_error(
    model: FakeModel,
) -> None:
    model.hold = threading.Event()
    client = GatewayClient(timeout=0.2)
    try:
        req = gateway.parse("AIGateway", {"url": model.url + CHAT, "body": chat("late")})
        assert isinstance(req, gateway.GatewayRequest)
        outcome = await client.perform(req, RunLimits(), Usage())
    finally:
        model.hold.set()
        await client.aclose()
    assert outcome.memo is None
    assert outcome.transient is not None
    assert "did not answer within 0.2 s" in outcome.transient["message"]


# -- step.fetch -----------------------------------------------------------------------------


def fetch_app(model: FakeModel) -> Durable:
    d = Durable("t", dev=True)

    @d.function(id="fetch", trigger=TriggerEvent("t/fetch"), retries=2)
    async def fetch(ctx: Context) -> dict[str, Any]:
        page = await ctx.step.fetch("page", model.url + "/page")
        posted = await ctx.step.fetch(
            "post", model.url + "/echo", method="POST", json={"n": 1}, headers={"x-a": "b"}
        )
        missing = await ctx.step.fetch("missing", model.url + "/missing")
        return {
            "page": [page.status_code, page.text, page.headers.get("x-page"), page.ok],
            "post": [posted.status_code, posted.json()],
            "missing": [missing.status_code, missing.ok, missing.text],
        }

    return d


def test_fetch_get_and_post_return_the_response(model: FakeModel, embedded: StartFactory) -> None:
    model.fail = [503]  # the first GET fails: retried
    h = embedded(fetch_app(model))
    h.send("t/fetch")
    run = finished(h, "fetch")
    assert run["status"] == "completed", run
    assert run["output"] == {
        "page": [200, "a page", "1", True],
        "post": [201, {"method": "POST", "body": '{"n":1}', "type": "application/json"}],
        "missing": [404, False, "no such page"],
    }
    assert len(model.calls("/page")) == 2
    [post] = model.calls("/echo")
    assert post.headers["x-a"] == "b"


def test_parallel_fetches_resume_the_run_once_both_answered(
    model: FakeModel, embedded: StartFactory
) -> None:
    d = Durable("t", dev=True)
    calls: list[int] = []

    @d.function(id="fetch", trigger=TriggerEvent("t/fetch"))
    async def fetch(ctx: Context) -> list[Any]:
        calls.append(1)
        page, gone = await asyncio.gather(
            ctx.step.fetch("page", model.url + "/page"),
            ctx.step.fetch("gone", model.url + "/empty", method="DELETE"),
        )
        return [page.text, gone.status_code, gone.body]

    h = embedded(d)
    h.send("t/fetch")
    run = finished(h, "fetch")
    assert run["output"] == ["a page", 204, ""], run
    assert len(calls) == 2, "the function was called again before both answers were in"


def test_fetch_in_a_sync_function(model: FakeModel, embedded: StartFactory) -> None:
    d = Durable("t", dev=True)

    @d.function(id="fetch", trigger=TriggerEvent("t/fetch"))
    def fetch(ctx: SyncContext) -> list[Any]:
        res = ctx.step.fetch("put", model.url + "/echo", method="put", body="plain")
        return [res.status_code, res.json()["method"], res.json()["body"]]

    h = embedded(d, server="uvicorn")
    h.send("t/fetch")
    run = finished(h, "fetch")
    assert run["output"] == [200, "PUT", "plain"], run


def test_a_route_workflow_fetches_and_asks_the_model(model: FakeModel) -> None:
    d = Durable("t", dev=True)
    app = FastAPI()
    serve = Serve(app, d)

    @serve.post("/wf")
    async def wf(context: WorkflowContext[dict[str, Any]]) -> list[Any]:
        page = await context.fetch("page", model.url + "/page")
        url = model.url + CHAT
        answer = await context.infer("ask", url=url, auth_key=API_KEY, body=chat(page.text))
        return [page.status_code, answer["choices"][0]["message"]["content"]]

    with TestClient(app) as client:
        res = client.post("/wf", json={})
        assert res.status_code == 200, res.text
        run = Harness(client, d).finish(res.json()["workflowRunId"])
    assert run["output"] == [200, "echo: a page"], run


def test_a_fetch_of_a_url_that_cannot_work_fails_the_run_at_once(embedded: StartFactory) -> None:
    d = Durable("t", dev=True)

    @d.function(id="fetch", trigger=TriggerEvent("t/fetch"))
    async def fetch(ctx: Context) -> Any:
        return await ctx.step.fetch("bad", "ftp://example.com/file")

    h = embedded(d)
    h.send("t/fetch")
    run = finished(h, "fetch")
    assert run["status"] == "failed", run
    assert run["error"]["name"] == "InvalidStepError"
    assert "ftp://example.com/file" in run["error"]["message"]


# -- the ops as other SDKs send them ----------------------------------------------------------

STEP = hashlib.sha1(b"step").hexdigest()


def other_sdk(first: Callable[[], Any]) -> Starlette:
    """An app of another SDK: its function answers `first()` (a 206 op list, or a response),
    then, once the step has a memo, returns that memo."""

    async def serve(request: Request) -> JSONResponse:
        body = await request.json()
        if STEP in (body.get("steps") or {}):
            return JSONResponse({"memo": body["steps"][STEP]})
        answer = first()
        return answer if isinstance(answer, JSONResponse) else JSONResponse(answer, status_code=206)

    return Starlette(routes=[Route("/api/inngest", serve, methods=["POST"])])


def run_other(h: Harness, app: Starlette) -> dict[str, Any]:
    other = UvicornApp(app)
    other.start()
    try:
        url = f"{other.base_url}/api/inngest?fnId=other-f&stepId=step"
        fn = {
            "id": "other-f",
            "triggers": [{"event": "other/go"}],
            "steps": {"step": {"id": "step", "runtime": {"type": "http", "url": url}}},
        }
        body = {"appname": "other", "url": url, "functions": [fn]}
        assert h.post("/fn/register", body).status_code == 200
        h.send("other/go")
        runs = wait_until("a run", lambda: h.get("/v1/runs", function_id="other-f").json()["data"])
        return h.finish(runs[0]["run_id"])
    finally:
        other.stop()


def op(kind: str, opts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"op": kind, "id": STEP, "name": "step", "displayName": "step", "opts": opts}]


def test_an_ai_gateway_op_as_typescript_sends_it(model: FakeModel, embedded: StartFactory) -> None:
    opts = {
        "type": "step.ai.infer",
        "url": model.url + CHAT,
        "headers": {"x-extra": "1"},
        "auth_key": API_KEY,
        "format": "openai-chat",
        "body": chat("from ts"),
    }
    run = run_other(embedded(Durable("t", dev=True)), other_sdk(lambda: op("AIGateway", opts)))
    assert run["status"] == "completed", run
    memo = run["output"]["memo"]
    assert memo["data"]["choices"][0]["message"]["content"] == "echo: from ts"
    [call] = model.calls(CHAT)
    assert call.headers["x-extra"] == "1"


def test_a_gateway_op_as_typescript_sends_it(model: FakeModel, embedded: StartFactory) -> None:
    opts = {"url": model.url + "/echo", "method": "POST", "headers": {}, "body": "raw"}
    run = run_other(embedded(Durable("t", dev=True)), other_sdk(lambda: op("Gateway", opts)))
    data = run["output"]["memo"]["data"]
    assert data["status_code"] == 201, data
    assert data["url"] == model.url + "/echo"
    assert data["headers"]["content-type"] == "application/json"
    assert '"body":"raw"' in data["body"]


def test_a_gateway_op_with_a_bad_url_fails_its_step(embedded: StartFactory) -> None:
    opts = {"url": "not a url", "method": "GET"}
    run = run_other(embedded(Durable("t", dev=True)), other_sdk(lambda: op("Gateway", opts)))
    error = run["output"]["memo"]["error"]
    assert error["name"] == "GatewayError", error
    assert "'not a url'" in error["message"]


@pytest.mark.parametrize("kind", ["DeferAdd", "DeferAbort", "StepNotFound"])
def test_ops_that_cannot_go_on_fail_the_run_naming_the_op(
    kind: str, embedded: StartFactory
) -> None:
    run = run_other(embedded(Durable("t", dev=True)), other_sdk(lambda: op(kind, {})))
    assert run["status"] == "failed", run
    if kind == "StepNotFound":
        assert run["error"]["name"] == "StepNotFound", run["error"]
        assert "could not find step" in run["error"]["message"]
    else:
        assert run["error"]["name"] == "UnsupportedOpcode", run["error"]
        assert repr(kind) in run["error"]["message"]


def test_a_discovery_request_calls_the_app_again(embedded: StartFactory) -> None:
    calls: list[int] = []

    def first() -> Any:
        calls.append(1)
        if len(calls) == 1:
            return [{"op": "DiscoveryRequest", "id": "d1"}]
        return JSONResponse({"calls": len(calls)})

    run = run_other(embedded(Durable("t", dev=True)), other_sdk(first))
    assert run["status"] == "completed", run
    assert run["output"] == {"calls": 2}


def test_a_discovery_request_for_a_planned_step_asks_for_that_step_again(
    embedded: StartFactory,
) -> None:
    asked: list[str] = []

    async def serve(request: Request) -> JSONResponse:
        body = await request.json()
        target = request.query_params.get("stepId")
        asked.append(str(target))
        if STEP in (body.get("steps") or {}):
            return JSONResponse({"memo": body["steps"][STEP], "asked": asked})
        if target != STEP:
            planned = {"op": "StepPlanned", "id": STEP, "name": "step", "displayName": "step"}
            return JSONResponse([planned], status_code=206)
        if asked.count(STEP) == 1:
            return JSONResponse([{"op": "DiscoveryRequest", "id": "d1"}], status_code=206)
        ran = {"op": "StepRun", "id": STEP, "name": "step", "displayName": "step", "data": 7}
        return JSONResponse([ran], status_code=206)

    app = Starlette(routes=[Route("/api/inngest", serve, methods=["POST"])])
    run = run_other(embedded(Durable("t", dev=True)), app)
    assert run["status"] == "completed", run
    assert run["output"]["memo"] == {"data": 7}
    assert run["output"]["asked"] == ["step", STEP, STEP, "step"]
