"""A production-mode app whose steps leave a line in a side-effect ledger, for the failover tests.

The app is served to standalone orchestrators (`durable start`, on PostgreSQL): it signs and
verifies with `FAILOVER_SIGNING_KEY`, and syncs (`PUT /api/durable`) to `FAILOVER_ORCHESTRATOR_URL`.
Two functions with three steps each, one per event name:

- `seq`: three steps one after the other;
- `fan`: one step, then two in parallel (`asyncio.gather`).

Each step waits a few tens of milliseconds, then appends one tab-separated line to the file
named by `FAILOVER_LEDGER` and fsyncs it, so a line written before a SIGKILL is never lost:

    <marker>  <step id>  <app pid>  <client port>  <arrival time>  <attempt>

`client port` is the TCP source port of the request that ran the step (it tells which
orchestrator process sent it) and `arrival time` the `time.time()` at which that request
reached the app. A run's output is the list of its step results (`"<marker>:<step id>"`), in
plan order. Run it with `uvicorn --factory --app-dir tests/failover ledger_app:create_app`.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import time

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from adapters.fastapi import Serve
from durable_core import Context, Durable, TriggerEvent

APP_ID = "failover"
SERVE_PATH = "/api/durable"
KINDS = ("seq", "fan")

# The steps of each function, in plan order: a string is one step, a tuple runs in parallel.
PLANS: dict[str, list[str | tuple[str, ...]]] = {
    "seq": ["s1", "s2", "s3"],
    "fan": ["f1", ("p1", "p2")],
}


def steps_of(kind: str) -> list[str]:
    """Every step id of a function, in plan order."""
    out: list[str] = []
    for entry in PLANS[kind]:
        out.extend(entry if isinstance(entry, tuple) else [entry])
    return out


def expected_output(marker: str, kind: str) -> list[str]:
    return [f"{marker}:{step}" for step in steps_of(kind)]


# Who sent the request being handled: (client port, arrival time).
_request: contextvars.ContextVar[tuple[int, float]] = contextvars.ContextVar(
    "request", default=(0, 0.0)
)


def _step_seconds(step: str) -> float:
    return 0.02 + 0.01 * (sum(map(ord, step)) % 3)


def _append(line: str) -> None:
    fd = os.open(os.environ["FAILOVER_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


async def effect(marker: str, step: str, attempt: int) -> str:
    await asyncio.sleep(_step_seconds(step))
    port, arrived = _request.get()
    _append(f"{marker}\t{step}\t{os.getpid()}\t{port}\t{arrived:.6f}\t{attempt}\n")
    return f"{marker}:{step}"


def create_app() -> ASGIApp:
    """The served app, configured from the environment (`uvicorn --factory`)."""
    durable = Durable(
        APP_ID,
        signing_key=os.environ["FAILOVER_SIGNING_KEY"],
        event_key=os.environ["FAILOVER_EVENT_KEY"],
        orchestrator_url=os.environ["FAILOVER_ORCHESTRATOR_URL"],
    )

    async def one(ctx: Context, step: str) -> str:
        return await ctx.step.run(step, effect, ctx.event.data["marker"], step, ctx.attempt)

    @durable.function(id="seq", trigger=TriggerEvent("failover/seq"), retries=3)
    async def seq(ctx: Context) -> list[str]:
        return [await one(ctx, step) for step in steps_of("seq")]

    @durable.function(id="fan", trigger=TriggerEvent("failover/fan"), retries=3)
    async def fan(ctx: Context) -> list[str]:
        first = await one(ctx, "f1")
        return [first, *await asyncio.gather(one(ctx, "p1"), one(ctx, "p2"))]

    fastapi_app = FastAPI()
    Serve(fastapi_app, durable, path=SERVE_PATH, embedded=False)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        """The FastAPI app, noting who sent each request (read by the steps it runs)."""
        if scope["type"] == "http":
            client = scope.get("client")
            _request.set((int(client[1]) if client else 0, time.time()))
        await fastapi_app(scope, receive, send)

    return app
