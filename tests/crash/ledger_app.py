"""An app whose steps leave a line in a side-effect ledger, for the crash-recovery tests.

Each step waits a few tens of milliseconds, then appends `<marker>\\t<step id>\\t<pid>` to the
file named by `CRASH_LEDGER` and fsyncs it, so a line written before a SIGKILL is never lost.
Three functions, one per event name, each with five steps:

- `seq`: five steps one after the other;
- `nap`: two steps, a short `ctx.step.sleep`, three steps;
- `fan`: one step, three in parallel (`asyncio.gather`), one step.

A run's output is the list of its step results (`"<marker>:<step id>"`), in plan order.

Without `CRASH_ORCHESTRATOR_URL` the orchestrator runs embedded (its database under
`DURABLE_DIR`, or at `DURABLE_DATABASE_URL`); with it, the app is served to that standalone
orchestrator. Run it with `uvicorn --app-dir tests/crash ledger_app:app`.

`create_wsgi_app()` builds the same three functions written as sync code, in a Flask app with
the orchestrator embedded: `gunicorn --pythonpath tests/crash 'ledger_app:create_wsgi_app()'`.

`GET /inflight` answers how many requests to the serve endpoint are being handled, so a
test can tell when the app has gone quiet.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from adapters.fastapi import Serve
from durable_core import Context, Durable, SyncContext, TriggerEvent

if TYPE_CHECKING:
    from flask import Flask

APP_ID = "crash"
SERVE_PATH = "/api/durable"
NAP = "300ms"

# The steps of each function, in plan order: a string is one step, a tuple runs in parallel.
PLANS: dict[str, list[str | tuple[str, ...]]] = {
    "seq": ["s1", "s2", "s3", "s4", "s5"],
    "nap": ["a1", "a2", "a3", "a4", "a5"],
    "fan": ["f1", ("p1", "p2", "p3"), "f5"],
}


def steps_of(kind: str) -> list[str]:
    """Every step id of a function, in plan order."""
    out: list[str] = []
    for entry in PLANS[kind]:
        out.extend(entry if isinstance(entry, tuple) else [entry])
    return out


def width_of(kind: str) -> int:
    """How many steps of one run of `kind` can run at the same moment."""
    return max(len(e) if isinstance(e, tuple) else 1 for e in PLANS[kind])


def expected_output(marker: str, kind: str) -> list[str]:
    return [f"{marker}:{step}" for step in steps_of(kind)]


def _step_seconds(step: str) -> float:
    return 0.02 + 0.01 * (sum(map(ord, step)) % 4)


def _append(line: str) -> None:
    fd = os.open(os.environ["CRASH_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


async def effect(marker: str, step: str) -> str:
    await asyncio.sleep(_step_seconds(step))
    _append(f"{marker}\t{step}\t{os.getpid()}\n")
    return f"{marker}:{step}"


def effect_sync(marker: str, step: str) -> str:
    time.sleep(_step_seconds(step))
    _append(f"{marker}\t{step}\t{os.getpid()}\n")
    return f"{marker}:{step}"


durable = Durable(APP_ID, dev=True, orchestrator_url=os.environ.get("CRASH_ORCHESTRATOR_URL"))


async def _one(ctx: Context, step: str) -> str:
    return await ctx.step.run(step, effect, ctx.event.data["marker"], step)


@durable.function(id="seq", trigger=TriggerEvent("crash/seq"), retries=2)
async def seq(ctx: Context) -> list[str]:
    return [await _one(ctx, step) for step in steps_of("seq")]


@durable.function(id="nap", trigger=TriggerEvent("crash/nap"), retries=2)
async def nap(ctx: Context) -> list[str]:
    out = [await _one(ctx, "a1"), await _one(ctx, "a2")]
    await ctx.step.sleep("nap", NAP)
    out += [await _one(ctx, "a3"), await _one(ctx, "a4"), await _one(ctx, "a5")]
    return out


@durable.function(id="fan", trigger=TriggerEvent("crash/fan"), retries=2)
async def fan(ctx: Context) -> list[str]:
    out = [await _one(ctx, "f1")]
    out += await asyncio.gather(_one(ctx, "p1"), _one(ctx, "p2"), _one(ctx, "p3"))
    out.append(await _one(ctx, "f5"))
    return out


fastapi_app = FastAPI()
Serve(fastapi_app, durable, path=SERVE_PATH)
_active = 0


@fastapi_app.get("/inflight")
async def inflight() -> dict[str, Any]:
    return {"active": _active}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The FastAPI app, counting the requests to the serve endpoint while they are handled."""
    global _active
    counted = scope["type"] == "http" and scope["path"] == SERVE_PATH
    if counted:
        _active += 1
    try:
        await fastapi_app(scope, receive, send)
    finally:
        if counted:
            _active -= 1


def create_wsgi_app() -> Flask:
    """The three functions as sync code, served by Flask with the orchestrator embedded."""
    from flask import Flask

    from adapters.flask import durable_blueprint

    sync = Durable(APP_ID, dev=True)

    def one(ctx: SyncContext, step: str) -> str:
        return ctx.step.run(step, effect_sync, ctx.event.data["marker"], step)

    @sync.function(id="seq", trigger=TriggerEvent("crash/seq"), retries=2)
    def seq(ctx: SyncContext) -> list[str]:
        return [one(ctx, step) for step in steps_of("seq")]

    @sync.function(id="nap", trigger=TriggerEvent("crash/nap"), retries=2)
    def nap(ctx: SyncContext) -> list[str]:
        out = [one(ctx, "a1"), one(ctx, "a2")]
        ctx.step.sleep("nap", NAP)
        return [*out, one(ctx, "a3"), one(ctx, "a4"), one(ctx, "a5")]

    @sync.function(id="fan", trigger=TriggerEvent("crash/fan"), retries=2)
    def fan(ctx: SyncContext) -> list[str]:
        first = one(ctx, "f1")
        middle = ctx.step.parallel(*(functools.partial(one, ctx, s) for s in ("p1", "p2", "p3")))
        return [first, *middle, one(ctx, "f5")]

    flask_app = Flask(__name__)
    flask_app.register_blueprint(durable_blueprint(sync, path=SERVE_PATH))
    return flask_app
