"""Traced runs as users run them: in embedded mode under uvicorn, and over HTTP with the app
under uvicorn called by a standalone orchestrator (as `durable dev` serves it). A run made of
several requests (a sleep between its steps, parallel steps, a retry) is one trace: every step
span is a child of the one run span."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from adapters.fastapi import Serve
from durable_core import Context, Durable, SyncContext, TriggerEvent
from durable_core.orchestrator.api import Api
from durable_core.orchestrator.service import Orchestrator
from durable_core.orchestrator.store import open_store
from durable_core.tracing import RUN_ID, RUN_OUTCOME, STEP_ATTEMPT, STEP_ID, STEP_OUTCOME
from orchestrator.conftest import DEADLINE, UvicornApp, wait_until

from .conftest import Spans


def define(d: Durable) -> None:
    """The functions: steps around a sleep, parallel steps and a step that fails once."""
    tracer = d.tracing.tracer()
    assert tracer is not None
    user = tracer.tracer  # the app's own spans, opened inside steps
    failed_once: set[str] = set()

    def flaky(run_id: str) -> str:
        if run_id not in failed_once:
            failed_once.add(run_id)
            raise RuntimeError("the first try fails")
        with user.start_as_current_span("inside flaky"):
            return "ok"

    @d.function(id="long", trigger=TriggerEvent("shop/long"), retries=2)
    async def long(ctx: Context) -> list[Any]:
        first = await ctx.step.run("first", lambda: 1)
        await ctx.step.sleep("nap", "50ms")
        both = await asyncio.gather(
            ctx.step.run("left", lambda: 2), ctx.step.run("right", lambda: 3)
        )
        return [first, *both, await ctx.step.run("flaky", flaky, ctx.run_id)]

    @d.function(id="long-sync", trigger=TriggerEvent("shop/long-sync"), retries=2)
    def long_sync(ctx: SyncContext) -> list[Any]:
        first = ctx.step.run("first", lambda: 1)
        ctx.step.sleep("nap", "50ms")
        both = ctx.step.parallel(
            lambda: ctx.step.run("left", lambda: 2), lambda: ctx.step.run("right", lambda: 3)
        )
        return [first, *both, ctx.step.run("flaky", flaky, ctx.run_id)]


def check_one_trace(spans: Spans, run_id: str) -> None:
    ours = [s for s in spans.all() if s.attributes and s.attributes.get(RUN_ID) == run_id]
    [root] = [s for s in ours if RUN_OUTCOME in (s.attributes or {})]
    assert root.attributes[RUN_OUTCOME] == "completed"  # type: ignore[index]
    steps = [s for s in ours if s is not root]
    attempts = sorted(
        (s.attributes[STEP_ID], s.attributes[STEP_ATTEMPT], s.attributes[STEP_OUTCOME])  # type: ignore[index]
        for s in steps
    )
    assert attempts == [
        ("first", 0, "ok"),
        ("flaky", 0, "retrying"),
        ("flaky", 1, "ok"),
        ("left", 0, "ok"),
        ("right", 0, "ok"),
    ]
    assert {s.context.trace_id for s in steps} == {root.context.trace_id}
    assert {s.parent.span_id for s in steps if s.parent} == {root.context.span_id}
    assert all(s.parent is not None for s in steps)
    assert root.start_time is not None and all(
        s.start_time is not None and s.start_time >= root.start_time for s in steps
    )
    [inside] = [
        s for s in spans.named("inside flaky") if s.context.trace_id == root.context.trace_id
    ]
    [ok] = [
        s for s in steps if s.attributes[STEP_ID] == "flaky" and s.attributes[STEP_ATTEMPT] == 1
    ]  # type: ignore[index]
    assert inside.parent is not None and inside.parent.span_id == ok.context.span_id


def traced_app(spans: Spans, **options: Any) -> Durable:
    d = Durable("shop", tracing=spans.provider, **options)
    define(d)
    return d


@pytest.mark.parametrize("fn", ["long", "long-sync"])
def test_embedded_under_uvicorn(
    spans: Spans, fn: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DURABLE_DATABASE_URL", f"sqlite:///{tmp_path}/durable.db")
    d = traced_app(spans, dev=True)
    app = FastAPI()
    Serve(app, d)
    server = UvicornApp(app)
    server.start()
    try:
        with httpx.Client(base_url=server.base_url + "/durable", timeout=DEADLINE) as api:
            run_id = start_and_finish(api, f"shop/{fn}", f"shop-{fn}")
    finally:
        server.stop()
    check_one_trace(spans, run_id)


@contextlib.contextmanager
def standalone(tmp_path: Path, http_checkpoints: bool) -> Iterator[str]:
    """A standalone orchestrator (SQLite) serving its API under uvicorn: its base URL."""
    store = open_store(f"sqlite:///{tmp_path}/orchestrator.db")
    orch = Orchestrator(store, backoff=(0.05,), http_checkpoints=http_checkpoints)
    server = UvicornApp(Api(orch).served())
    server.start()
    try:
        yield server.base_url
    finally:
        server.stop()


@pytest.mark.parametrize("http_checkpoints", [True, False], ids=["checkpoints", "no-checkpoints"])
@pytest.mark.parametrize("fn", ["long", "long-sync"])
def test_over_http_with_a_standalone_orchestrator(
    spans: Spans, tmp_path: Path, fn: str, http_checkpoints: bool
) -> None:
    with standalone(tmp_path, http_checkpoints) as orch_url:
        d = traced_app(spans, dev=True, orchestrator_url=orch_url)
        app = FastAPI()
        Serve(app, d, embedded=False)
        server = UvicornApp(app)
        server.start()
        try:
            synced = httpx.put(f"{server.base_url}/api/durable", timeout=DEADLINE)
            assert synced.status_code == 200, synced.text
            with httpx.Client(base_url=orch_url, timeout=DEADLINE) as api:
                run_id = start_and_finish(api, f"shop/{fn}", f"shop-{fn}")
        finally:
            server.stop()
    check_one_trace(spans, run_id)


def start_and_finish(api: httpx.Client, event: str, fn_id: str) -> str:
    """Send `event`; the id of the run it started, once that run has completed."""
    res = api.post("/e/key", json={"name": event, "data": {}})
    assert res.status_code == 200, res.text

    def finished() -> dict[str, Any] | None:
        runs = api.get("/v1/runs", params={"function_id": fn_id}).json()["data"]
        if runs and runs[0]["status"] in ("completed", "failed", "cancelled"):
            return dict(runs[0])
        return None

    run = wait_until(f"a run of {fn_id} to finish", finished)
    assert run["status"] == "completed", run
    return str(run["run_id"])
