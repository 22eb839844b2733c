"""`step.ai.infer` and `step.fetch` over HTTP: `durable dev` as a real process calls an app of
ours and an `inngest` 0.5.19 app, each under uvicorn, and makes their model and fetch
requests to the fake model server itself."""

from __future__ import annotations

import os
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic.warnings import PydanticDeprecatedSince20

from adapters.fastapi import Serve
from durable_core import Context, Durable, StepError, SyncContext, TriggerEvent

from .conftest import DEADLINE, UvicornApp, free_port, sqlite_only, wait_until
from .fake_model import API_KEY, FakeModel
from .test_cli import Dev, durable_command

with warnings.catch_warnings():
    # inngest 0.5.19 declares one pydantic model with a class-based `Config`.
    warnings.filterwarnings("ignore", category=PydanticDeprecatedSince20)
    import inngest
    import inngest.fast_api
    from inngest.experimental.ai import openai as inngest_openai

pytestmark = sqlite_only  # `durable dev` keeps SQLite; test_gateway.py covers both stores

CHAT = "/v1/chat/completions"
FUNCTIONS = {"gw-ask", "gw-ask-sync", "gw-fetch", "peer-ask"}


def our_app(model: FakeModel, url: str) -> FastAPI:
    d = Durable("gw", dev=True, orchestrator_url=url)

    def body(q: str) -> dict[str, Any]:
        return {"model": "gpt-test", "messages": [{"role": "user", "content": q}]}

    @d.function(id="ask", trigger=TriggerEvent("gw/ask"), retries=2)
    async def ask(ctx: Context) -> dict[str, Any]:
        key = ctx.event.data.get("key", API_KEY)
        try:
            answer = await ctx.step.ai.infer(
                "ask-model", url=model.url + CHAT, auth_key=key, body=body(ctx.event.data["q"])
            )
        except StepError as err:
            return {"failed": err.message}
        return {"content": answer["choices"][0]["message"]["content"]}

    @d.function(id="ask-sync", trigger=TriggerEvent("gw/ask-sync"))
    def ask_sync(ctx: SyncContext) -> str:
        answer = ctx.step.ai.infer(
            "ask-model", url=model.url + CHAT, auth_key=API_KEY, body=body("sync")
        )
        return str(answer["choices"][0]["message"]["content"])

    @d.function(id="fetch", trigger=TriggerEvent("gw/fetch"), retries=2)
    async def fetch(ctx: Context) -> list[Any]:
        page = await ctx.step.fetch("page", model.url + "/page")
        posted = await ctx.step.fetch("post", model.url + "/echo", method="POST", json={"a": 1})
        return [page.status_code, page.text, posted.status_code, posted.json()["body"]]

    web = FastAPI()
    Serve(web, d, path="/api/durable")
    return web


def inngest_app(model: FakeModel, url: str) -> FastAPI:
    client = inngest.Inngest(
        app_id="peer", is_production=False, api_base_url=url, event_api_base_url=url
    )
    adapter = inngest_openai.Adapter(auth_key=API_KEY, base_url=model.url + "/v1", model="gpt-x")

    @client.create_function(fn_id="ask", trigger=inngest.TriggerEvent(event="peer/ask"))
    async def ask(ctx: inngest.Context) -> str:
        messages = [{"role": "user", "content": "from inngest-py"}]
        answer = await ctx.step.ai.infer("ask-model", adapter=adapter, body={"messages": messages})
        choices: Any = answer["choices"]
        return str(choices[0]["message"]["content"])

    web = FastAPI()
    inngest.fast_api.serve(web, client, [ask])
    return web


@pytest.fixture
def model() -> Iterator[FakeModel]:
    fake = FakeModel().start()
    yield fake
    fake.stop()


@pytest.fixture
def dev(tmp_path: Path, model: FakeModel) -> Iterator[Dev]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ours, theirs = UvicornApp(our_app(model, url)), UvicornApp(inngest_app(model, url))
    ours.start()
    theirs.start()
    log = tmp_path / "dev.log"
    app_urls = [f"{ours.base_url}/api/durable", f"{theirs.base_url}/api/inngest"]
    args = ["dev", "--port", str(port), "--db", str(tmp_path / "dev.db"), "--fast-retries"]
    for app_url in app_urls:
        args += ["-u", app_url]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INNGEST_", "DURABLE_"))}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*durable_command(), *args], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    server = Dev(url, log)
    try:

        def synced() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"durable dev exited: {log.read_text()}")
            try:
                fns = {f["function_id"] for f in server.get("/v1/functions")["data"]}
            except httpx.HTTPError:
                return False
            return fns == FUNCTIONS

        wait_until("durable dev to sync both apps", synced, deadline=DEADLINE * 2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        ours.stop()
        theirs.stop()


def send(dev: Dev, name: str, data: dict[str, Any] | None = None) -> None:
    res = httpx.post(f"{dev.url}/e/key", json={"name": name, "data": data or {}}, timeout=DEADLINE)
    assert res.status_code == 200, res.text


def finished(dev: Dev, fn_id: str) -> dict[str, Any]:
    run_id = wait_until(f"a run of {fn_id}", lambda: dev.runs(fn_id))[0]["run_id"]
    return dev.wait_status(run_id, "completed", "failed")


def test_ai_infer_over_http_with_a_retry(dev: Dev, model: FakeModel) -> None:
    model.fail = [500]
    send(dev, "gw/ask", {"q": "over http"})
    run = finished(dev, "gw-ask")
    assert run["status"] == "completed", (run, dev.log.read_text())
    assert run["output"] == {"content": "echo: over http"}
    calls = model.calls(CHAT)
    assert len(calls) == 2
    assert all(c.headers["authorization"] == f"Bearer {API_KEY}" for c in calls)


def test_ai_infer_over_http_a_wrong_key_fails_the_step(dev: Dev, model: FakeModel) -> None:
    send(dev, "gw/ask", {"q": "x", "key": "sk-wrong"})
    run = finished(dev, "gw-ask")
    assert "answered 401" in run["output"]["failed"], run
    assert len(model.calls(CHAT)) == 1


def test_ai_infer_over_http_in_a_sync_function(dev: Dev, model: FakeModel) -> None:
    send(dev, "gw/ask-sync")
    run = finished(dev, "gw-ask-sync")
    assert run["output"] == "echo: sync", run


def test_fetch_over_http(dev: Dev, model: FakeModel) -> None:
    model.fail = [502]
    send(dev, "gw/fetch")
    run = finished(dev, "gw-fetch")
    assert run["output"] == [200, "a page", 201, '{"a":1}'], run
    assert len(model.calls("/page")) == 2


def test_inngest_py_ai_infer_on_our_orchestrator(dev: Dev, model: FakeModel) -> None:
    send(dev, "peer/ask")
    run = finished(dev, "peer-ask")
    assert run["status"] == "completed", (run, dev.log.read_text())
    assert run["output"] == "echo: from inngest-py"
    [call] = model.calls(CHAT)
    assert call.json()["model"] == "gpt-x"
    assert call.headers["authorization"] == f"Bearer {API_KEY}"
