"""Checkpoints over HTTP: a standalone orchestrator (its API under uvicorn on loopback) calls
our SDK's app (under uvicorn too); the app posts each finished step to
`POST /v1/checkpoint/{run_id}/async`, so a chain of steps runs in one execution request.

Also the checkpoint API on its own: a stale request (its queue item answered, or of another
run, or its run over) gets 409, a step checkpointed twice is stored once, a production
orchestrator wants its key (401, before the body is read), bad bodies get a 400 naming the
field, and steps over the run's limits a 413 that leaves the run as it was. On both stores."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from adapters.fastapi import Serve
from durable_core import Context, Durable, Limits, SyncContext, TriggerEvent
from durable_core.orchestrator.api import Api
from durable_core.orchestrator.service import Orchestrator
from durable_core.orchestrator.store import open_store
from durable_core.signing import hashed_signing_key

from .conftest import DEADLINE, FINISHED, UvicornApp, postgres_only, wait_until

SERVE_PATH = "/api/durable"
KEY = "signkey-prod-0123456789abcdef0123456789abcdef"
N = 12
RAN: list[str] = []


class Counted:
    """An ASGI app that counts the execution requests reaching the serve endpoint."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.executions = 0
        self.active = 0  # execution requests being handled
        self.lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        counted = scope["type"] == "http" and scope["method"] == "POST"
        counted = counted and scope["path"] == SERVE_PATH
        if counted:
            with self.lock:
                self.executions += 1
                self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            if counted:
                with self.lock:
                    self.active -= 1


@contextlib.contextmanager
def standalone(database_url: str, **options: Any) -> Iterator[tuple[str, Orchestrator]]:
    """A standalone orchestrator's API under uvicorn: its base URL."""
    options.setdefault("http_checkpoints", True)  # on with PostgreSQL too: what is tested here
    orch = Orchestrator(open_store(database_url), backoff=(0.05,), **options)
    server = UvicornApp(Api(orch).served())
    server.start()
    try:
        yield server.base_url, orch
    finally:
        server.stop()


def chain_app(orch_url: str, **keys: Any) -> tuple[Durable, Counted]:
    durable = Durable("chain", orchestrator_url=orch_url, **keys)

    def add(total: int, i: int) -> int:
        return total + i

    async def add_async(total: int, i: int) -> int:
        return total + i

    @durable.function(id="async-chain", trigger=TriggerEvent("chain/async"))
    async def async_chain(ctx: Context) -> int:
        total = 0
        for i in range(N):
            total = await ctx.step.run(f"s{i}", add_async, total, i)
        return total

    @durable.function(id="sync-chain", trigger=TriggerEvent("chain/sync"))
    def sync_chain(ctx: SyncContext) -> int:
        total = 0
        for i in range(N):
            total = ctx.step.run(f"s{i}", add, total, i)
        return total

    @durable.function(id="one", trigger=TriggerEvent("chain/one"))
    async def one(ctx: Context) -> str:
        return await ctx.step.run("only", lambda: "done")

    @durable.function(id="napping", trigger=TriggerEvent("chain/nap"))
    async def napping(ctx: Context) -> list[int]:
        a = await ctx.step.run("a", lambda: 1)
        b = await ctx.step.run("b", lambda: 2)
        await ctx.step.sleep("nap", "50ms")
        c = await ctx.step.run("c", lambda: 3)
        return [a, b, c]

    @durable.function(
        id="limited", trigger=TriggerEvent("chain/limited"), limits=Limits(step_output=64)
    )
    async def limited(ctx: Context) -> str:
        await ctx.step.run("small", lambda: "x")
        return await ctx.step.run("big", lambda: "y" * 200)

    tries: dict[str, int] = {}

    def flaky(step: str, failures: int) -> str:
        tries[step] = tries.get(step, 0) + 1
        if tries[step] <= failures:
            raise RuntimeError(f"{step} failed (try {tries[step]})")
        return step

    @durable.function(id="flaky", trigger=TriggerEvent("chain/flaky"), retries=2)
    async def flaky_chain(ctx: Context) -> list[str]:
        # `a` succeeds on its second attempt and is checkpointed; `b`, in the same request,
        # then has its own three attempts, not what is left of `a`'s.
        return [await ctx.step.run("a", flaky, "a", 1), await ctx.step.run("b", flaky, "b", 2)]

    @durable.function(id="cancelled", trigger=TriggerEvent("chain/cancel"))
    async def cancelled(ctx: Context) -> int:
        async def cancel_own_run() -> int:
            async with httpx.AsyncClient(base_url=orch_url) as api:
                res = await api.post(f"/v1/runs/{ctx.run_id}/cancel")
                assert res.status_code == 200, res.text
            return 1

        await ctx.step.run("first", lambda: RAN.append("first") or 0)
        await ctx.step.run("cancel", cancel_own_run)
        await ctx.step.run("after", lambda: RAN.append("after") or 2)  # never runs
        return 3

    app = FastAPI()
    Serve(app, durable, path=SERVE_PATH)
    return durable, Counted(app)


@contextlib.contextmanager
def served_app(orch_url: str, **keys: Any) -> Iterator[tuple[httpx.Client, Counted]]:
    """Our app under uvicorn, synced with the orchestrator at `orch_url`; a client for it."""
    counted = Counted(None)
    server = UvicornApp(counted)
    if "signing_key" in keys:  # an unsigned sync in production registers the serve origin
        keys["serve_origin"] = server.base_url
    counted.app = chain_app(orch_url, **keys)[1].app
    server.start()
    headers = (
        {"authorization": f"Bearer {hashed_signing_key(KEY)}"} if "signing_key" in keys else {}
    )
    try:
        with httpx.Client(base_url=orch_url, timeout=DEADLINE, headers=headers) as api:
            res = httpx.put(f"{server.base_url}{SERVE_PATH}", timeout=DEADLINE)
            assert res.status_code == 200, res.text
            yield api, counted
    finally:
        server.stop()


def send(api: httpx.Client, name: str) -> None:
    res = api.post("/e/key", json={"name": name, "data": {}})
    assert res.status_code == 200, res.text


def finished(api: httpx.Client, fn_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        runs = api.get("/v1/runs", params={"function_id": fn_id}).json()["data"]
        if runs and runs[0]["status"] in FINISHED:
            return dict(api.get(f"/v1/runs/{runs[0]['run_id']}").json())
        return None

    return dict(wait_until(f"a run of {fn_id} to finish", done))


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_chain_of_steps_runs_in_one_request(database_url: str, kind: str) -> None:
    with standalone(database_url) as (url, _), served_app(url, dev=True) as (api, app):
        before = app.executions
        send(api, f"chain/{kind}")
        run = finished(api, f"chain-{kind}-chain")
        assert run["status"] == "completed", run
        assert run["output"] == sum(range(N))
        assert app.executions - before == 1
        ran = [s["name"] for s in run["steps"] if s["op"] == "StepRun"]
        assert ran == [f"s{i}" for i in range(N)]  # each step stored once, in order


def test_checkpoints_are_signed_for_a_production_orchestrator(database_url: str) -> None:
    with (
        standalone(database_url, signing_key=KEY, event_keys=["key"]) as (url, _),
        served_app(url, signing_key=KEY, event_key="key") as (api, app),
    ):
        send(api, "chain/sync")
        run = finished(api, "chain-sync-chain")
        assert (run["status"], run["output"], app.executions) == ("completed", sum(range(N)), 1)


def test_a_one_step_run_is_one_request(database_url: str) -> None:
    with standalone(database_url) as (url, _), served_app(url, dev=True) as (api, app):
        send(api, "chain/one")
        run = finished(api, "chain-one")
        assert (run["status"], run["output"], app.executions) == ("completed", "done", 1)
        assert [s["name"] for s in run["steps"]] == ["only"]


def test_a_sleep_ends_the_request_and_the_run_goes_on(database_url: str) -> None:
    with standalone(database_url) as (url, _), served_app(url, dev=True) as (api, app):
        send(api, "chain/nap")
        run = finished(api, "chain-napping")
        assert (run["status"], run["output"]) == ("completed", [1, 2, 3])
        assert app.executions == 2  # a, b and the sleep; then c and the output
        ran = [s["name"] for s in run["steps"] if s["op"] == "StepRun"]
        assert ran == ["a", "b", "c"]


def test_a_step_over_the_limit_fails_the_run_with_the_earlier_steps_stored(
    database_url: str,
) -> None:
    with standalone(database_url) as (url, _), served_app(url, dev=True) as (api, _app):
        send(api, "chain/limited")
        run = finished(api, "chain-limited")
        assert run["status"] == "failed"
        assert "64" in run["error"]["message"] or "limit" in run["error"]["message"].lower()


# -- the checkpoint API on its own -----------------------------------------------------------


class HeldApp:
    """An app that keeps each execution request open until released, then answers with what
    the test says; it records the requests' bodies (their `ctx.qi_id`)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.release = threading.Event()
        self.answer: tuple[int, Any] = (200, "done")
        routes = [Route("/api/held", self.execute, methods=["POST"])]
        self.server = UvicornApp(Starlette(routes=routes))

    async def execute(self, request: Request) -> Response:
        self.bodies.append(await request.json())
        await asyncio.to_thread(self.release.wait, DEADLINE)
        status, body = self.answer
        return JSONResponse(body, status_code=status)


@pytest.fixture
def held() -> Iterator[HeldApp]:
    app = HeldApp()
    app.server.start()
    yield app
    app.release.set()
    app.server.stop()


def start_held(api: httpx.Client, app: HeldApp, local_id: str, **config: Any) -> dict[str, Any]:
    """Register a function served by `app`, start a run and return its request's body."""
    fn_id = f"held-{local_id}"
    url = f"{app.server.base_url}/api/held?fnId={fn_id}&stepId=step"
    step = {"id": "step", "name": "step", "runtime": {"type": "http", "url": url}}
    fn = {"id": fn_id, "triggers": [{"event": f"held/{local_id}"}], "steps": {"step": step}}
    res = api.post("/fn/register", json={"appname": "held", "functions": [{**fn, **config}]})
    assert res.status_code == 200, res.text
    seen = len(app.bodies)
    send(api, f"held/{local_id}")
    wait_until("the request to reach the app", lambda: len(app.bodies) > seen)
    return app.bodies[seen]


def step_op(step: str, data: Any) -> dict[str, Any]:
    return {"op": "StepRun", "id": step, "name": step, "displayName": step, "data": data}


def checkpoint(
    api: httpx.Client, body: dict[str, Any], *steps: dict[str, Any], qi: Any = None
) -> httpx.Response:
    ctx = body["ctx"]
    payload = {
        "run_id": ctx["run_id"], "fn_id": ctx["fn_id"],
        "qi_id": ctx["qi_id"] if qi is None else qi,
        "request_id": None, "generation_id": None, "request_started_at": 1, "ts": 2,
        "steps": list(steps),
    }  # fmt: skip
    return api.post(f"/v1/checkpoint/{ctx['run_id']}/async", json=payload)


def test_a_checkpoint_is_stored_once_and_a_stale_one_gets_409(
    database_url: str, held: HeldApp
) -> None:
    with standalone(database_url) as (url, _), httpx.Client(base_url=url) as api:
        first = start_held(api, held, "twice")
        assert first["ctx"]["qi_id"]
        for _ in range(2):  # idempotent: the same step twice is stored once
            res = checkpoint(api, first, step_op("a", 1))
            assert res.status_code == 200, res.text
        res = checkpoint(api, first, step_op("a", 99), step_op("b", 2))
        assert res.status_code == 200, res.text
        other = start_held(api, held, "other")
        # a queue item of another run
        assert checkpoint(api, first, step_op("c", 3), qi=other["ctx"]["qi_id"]).status_code == 409
        held.answer = (206, [step_op("b", 2), {"op": "RunComplete", "id": "complete", "data": 7}])
        held.release.set()
        run = finished(api, "held-twice")
        assert (run["status"], run["output"]) == ("completed", 7)
        steps = [(s["name"], s["output"]) for s in run["steps"]]
        assert steps == [("a", 1), ("b", 2)]  # the first result stays; nothing stored twice
        late = checkpoint(api, first, step_op("c", 3))  # the request was answered
        assert late.status_code == 409, late.text
        assert "stale" in late.json()["error"]
        assert finished(api, "held-other")["status"] == "completed"
        assert checkpoint(api, other, step_op("z", 0)).status_code == 409  # the run is over


def test_a_checkpoint_over_the_limits_gets_413_and_stores_nothing(
    database_url: str, held: HeldApp
) -> None:
    with standalone(database_url) as (url, _), httpx.Client(base_url=url) as api:
        body = start_held(api, held, "small", limits={"stepOutput": 16})
        res = checkpoint(api, body, step_op("ok", 1), step_op("big", "x" * 100))
        assert res.status_code == 413, res.text
        assert "big" in res.json()["error"]
        assert checkpoint(api, body, step_op("fine", 2)).status_code == 200
        held.release.set()
        run = finished(api, "held-small")
        assert run["status"] == "completed"
        assert [s["name"] for s in run["steps"]] == ["fine"]


BAD_BODIES = [
    (b"{not json", "checkpoint"),
    (b"[]", "checkpoint"),
    (b'{"steps": []}', "qi_id"),
    (b'{"qi_id": "1", "steps": {}}', "steps"),
    (b'{"qi_id": "1", "steps": [{"op": "StepRun"}]}', "steps.0.id"),
    (b'{"qi_id": "1", "steps": [{"op": "Sleep", "id": "x"}]}', "steps.0.op"),
    (b'{"qi_id": "not-an-item", "steps": []}', "qi_id"),
    (b'{"run_id": "other", "qi_id": "1", "steps": []}', "run_id"),
]


def test_the_checkpoint_api_wants_the_key_then_a_good_body(database_url: str) -> None:
    with standalone(database_url, signing_key=KEY) as (url, _), httpx.Client(base_url=url) as api:
        path = "/v1/checkpoint/some-run/async"
        res = api.post(path, content=b"{not json")
        assert res.status_code == 401, res.text  # before the body is read
        auth = {"authorization": f"Bearer {hashed_signing_key(KEY)}"}
        for raw, field in BAD_BODIES:
            res = api.post(path, content=raw, headers=auth)
            assert res.status_code == 400, (raw, res.text)
            assert field in res.json()["error"], (raw, res.text)
        res = api.post(path, json={"qi_id": "1", "steps": []}, headers=auth)
        assert res.status_code == 404, res.text  # no such run


@postgres_only
def test_a_checkpoint_reaching_another_process_is_stored_from_the_store(
    database_url: str, held: HeldApp
) -> None:
    """Two orchestrator processes share a PostgreSQL database: whichever dispatched the
    request, a checkpoint to either is checked against the store and stored."""
    with (
        standalone(database_url) as (url_a, _),
        standalone(database_url) as (url_b, _),
        httpx.Client(base_url=url_a) as api_a,
        httpx.Client(base_url=url_b) as api_b,
    ):
        body = start_held(api_a, held, "shared")
        assert checkpoint(api_a, body, step_op("a", 1)).status_code == 200
        assert checkpoint(api_b, body, step_op("b", 2)).status_code == 200
        assert checkpoint(api_b, body, step_op("a", 5)).status_code == 200  # stored once
        held.release.set()
        run = finished(api_a, "held-shared")
        assert run["status"] == "completed"
        assert [(s["name"], s["output"]) for s in run["steps"]] == [("a", 1), ("b", 2)]
        assert checkpoint(api_b, body, step_op("c", 3)).status_code == 409


def test_a_shared_store_offers_no_checkpoints_unless_asked(
    database_url: str, held: HeldApp
) -> None:
    """With a store several processes share, an app checkpoints through whichever orchestrator
    its URL names, not the one that dispatched the request: requests name no queue item (so
    SDKs answer step by step) unless the orchestrator is told to offer checkpoints."""
    with (
        standalone(database_url, http_checkpoints=None) as (url, orch),
        httpx.Client(base_url=url) as api,
    ):
        body = start_held(api, held, "offer")
        assert ("qi_id" in body["ctx"]) is (not orch.store.shared)


def set_lease(database_url: str, item_id: int, assignments: str) -> None:
    """Change a queue item's lease in the store directly, as time or another process would."""

    async def change() -> None:
        store = open_store(database_url)
        await store.open()
        try:
            async with store.transaction() as tx:
                await tx.db.count(f"UPDATE queue SET {assignments} WHERE id=?", (item_id,))  # type: ignore[attr-defined]
        finally:
            await store.close()

    asyncio.run(change())


@postgres_only
def test_a_late_lease_renewal_is_no_stale_dispatch_but_a_takeover_is(
    database_url: str, held: HeldApp
) -> None:
    """A lease that ran out while its process still holds the item (a renewal that came late)
    loses no step; once another process has taken the item, the old request gets 409."""
    with (
        standalone(database_url) as (url_a, _),
        standalone(database_url) as (url_b, _),
        httpx.Client(base_url=url_a) as api_a,
        httpx.Client(base_url=url_b) as api_b,
    ):
        body = start_held(api_a, held, "late")
        item_id = int(str(body["ctx"]["qi_id"]).partition(".")[0])
        set_lease(database_url, item_id, "lease_until=1")  # ran out long ago, still its owner's
        assert checkpoint(api_a, body, step_op("a", 1)).status_code == 200  # the dispatcher
        assert checkpoint(api_b, body, step_op("b", 2)).status_code == 200  # another process
        set_lease(database_url, item_id, "lease_owner='0123abcd'")  # taken over
        for api in (api_a, api_b):
            res = checkpoint(api, body, step_op("c", 3))
            assert res.status_code == 409, res.text
        set_lease(database_url, item_id, "lease_until=NULL, lease_owner=NULL")  # released
        assert checkpoint(api_b, body, step_op("c", 3)).status_code == 409


def test_a_step_after_a_checkpointed_retry_gets_all_its_attempts(database_url: str) -> None:
    with standalone(database_url) as (url, _), served_app(url, dev=True) as (api, _app):
        send(api, "chain/flaky")
        run = finished(api, "chain-flaky")
        assert (run["status"], run["output"]) == ("completed", ["a", "b"]), run
        attempts = [(s["name"], s["attempt"]) for s in run["steps"] if s["op"] == "StepRun"]
        assert attempts == [("a", 1), ("b", 2)]


@contextlib.contextmanager
def wsgi_app(orch_url: str) -> Iterator[tuple[str, list[int]]]:
    """The chain as a Flask app (the WSGI serve path, `handle_sync`) under the standard
    library's WSGI server on loopback: its serve URL, and a count of execution requests."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from flask import Flask

    from adapters.flask import durable_blueprint

    durable = Durable("wsgi", dev=True, orchestrator_url=orch_url)

    @durable.function(id="sync-chain", trigger=TriggerEvent("wsgi/sync"))
    def sync_chain(ctx: SyncContext) -> int:
        return sum(ctx.step.run(f"s{i}", lambda i=i: i) for i in range(N))

    @durable.function(id="async-chain", trigger=TriggerEvent("wsgi/async"))
    async def async_chain(ctx: Context) -> int:
        return sum([await ctx.step.run(f"s{i}", lambda i=i: i) for i in range(N)])

    flask_app = Flask(__name__)
    flask_app.register_blueprint(durable_blueprint(durable, path=SERVE_PATH, embedded=False))
    executions = [0]

    def counted(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["REQUEST_METHOD"] == "POST":
            executions[0] += 1
        return flask_app(environ, start_response)

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = make_server("127.0.0.1", 0, counted, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}{SERVE_PATH}", executions
    finally:
        server.shutdown()
        server.server_close()
        thread.join(DEADLINE)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_wsgi_app_runs_a_chain_in_one_request(database_url: str, kind: str) -> None:
    with (
        standalone(database_url) as (url, _),
        wsgi_app(url) as (serve_url, executions),
        httpx.Client(base_url=url, timeout=DEADLINE) as api,
    ):
        assert httpx.put(serve_url, timeout=DEADLINE).status_code == 200
        send(api, f"wsgi/{kind}")
        run = finished(api, f"wsgi-{kind}-chain")
        assert (run["status"], run["output"], executions[0]) == ("completed", sum(range(N)), 1)


def test_a_run_cancelled_between_two_checkpoints_stops_its_request(database_url: str) -> None:
    """The next checkpoint gets 409 (the run is over): the request stops there."""
    RAN.clear()
    with standalone(database_url) as (url, _), served_app(url, dev=True) as (api, app):
        send(api, "chain/cancel")
        run = finished(api, "chain-cancelled")
        assert run["status"] == "cancelled"
        wait_until("the request to end", lambda: app.active == 0)
        assert (RAN, app.executions) == (["first"], 1)
        assert [s["name"] for s in run["steps"]] == ["first"]
