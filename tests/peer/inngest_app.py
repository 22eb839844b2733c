"""An app written with the unmodified `inngest` SDK (0.5.19), served by FastAPI under uvicorn.

Run as a script: `python inngest_app.py`, with
- PEER_ORCHESTRATOR_URL: the orchestrator (`durable dev`) the client syncs with and sends events to;
- PEER_APP_PORT: the port to serve on (127.0.0.1); the functions are at /api/inngest.

Every function has its own trigger event `peer/<fn id>` (the send_event target: `peer/sent`).
"""

from __future__ import annotations

import asyncio
import datetime
import os
import time
import warnings

import uvicorn
from fastapi import FastAPI
from pydantic.warnings import PydanticDeprecatedSince20

with warnings.catch_warnings():
    # inngest 0.5.19 declares one pydantic model with a class-based `Config`.
    warnings.filterwarnings(
        "ignore",
        message="Support for class-based `config` is deprecated",
        category=PydanticDeprecatedSince20,
    )
    import inngest
    import inngest.fast_api

ORCHESTRATOR_URL = os.environ.get("PEER_ORCHESTRATOR_URL", "http://127.0.0.1:8288")

client = inngest.Inngest(
    app_id="peer",
    is_production=False,
    api_base_url=ORCHESTRATOR_URL,
    event_api_base_url=ORCHESTRATOR_URL,
)


def _trigger(fn_id: str) -> inngest.TriggerEvent:
    return inngest.TriggerEvent(event=f"peer/{fn_id}")


def _plus_100(i: int) -> int:
    return i + 100


@client.create_function(fn_id="loop", trigger=_trigger("loop"), retries=2)
async def loop(ctx: inngest.Context) -> list[int]:
    out = []
    for i in range(3):
        out.append(await ctx.step.run("item", _plus_100, i))
    return out


@client.create_function(fn_id="sleep", trigger=_trigger("sleep"), retries=2)
async def sleep(ctx: inngest.Context) -> dict[str, str]:
    before = await ctx.step.run("before", lambda: "dozing")
    await ctx.step.sleep("nap", datetime.timedelta(milliseconds=500))
    after = await ctx.step.run("after", lambda: "awake")
    return {"before": before, "after": after}


@client.create_function(fn_id="wait", trigger=_trigger("wait"), retries=2)
async def wait(ctx: inngest.Context) -> dict[str, object]:
    ev = await ctx.step.wait_for_event(
        "approval",
        event="peer/approved",
        if_exp="async.data.order == event.data.order",
        timeout=datetime.timedelta(seconds=ctx.event.data["timeout_s"]),
    )
    if ev is None:
        return {"order": ctx.event.data["order"], "approved": None}
    return {"order": ctx.event.data["order"], "approved": {"name": ev.name, "by": ev.data["by"]}}


@client.create_function(fn_id="sent", trigger=_trigger("sent"), retries=2)
async def sent(ctx: inngest.Context) -> dict[str, object]:
    return {"token": ctx.event.data["token"], "event_id": ctx.event.id}


@client.create_function(fn_id="sender", trigger=_trigger("sender"), retries=2)
async def sender(ctx: inngest.Context) -> dict[str, object]:
    ids = await ctx.step.send_event(
        "send", inngest.Event(name="peer/sent", data={"token": ctx.event.data["token"]})
    )
    return {"ids": ids}


@client.create_function(fn_id="child", trigger=_trigger("child"), retries=0)
async def child(ctx: inngest.Context) -> dict[str, int]:
    return {"doubled": ctx.event.data["n"] * 2}


@client.create_function(fn_id="invoker", trigger=_trigger("invoker"), retries=2)
async def invoker(ctx: inngest.Context) -> dict[str, object]:
    out = await ctx.step.invoke("call-child", function=child, data={"n": ctx.event.data["n"]})
    return {"child": out}


@client.create_function(fn_id="parallel", trigger=_trigger("parallel"), retries=2)
async def parallel(ctx: inngest.Context) -> dict[str, object]:
    pair = await ctx.group.parallel(
        (
            lambda: ctx.step.run("left", lambda: "L"),
            lambda: ctx.step.run("right", lambda: "R"),
        )
    )
    joined = await ctx.step.run("join", lambda: "+".join(pair))
    return {"pair": list(pair), "joined": joined}


@client.create_function(fn_id="retry", trigger=_trigger("retry"), retries=3)
async def retry(ctx: inngest.Context) -> dict[str, object]:
    def flaky() -> str:
        if ctx.attempt == 0:
            raise inngest.RetryAfterError("not ready yet", 500)
        return f"ready on attempt {ctx.attempt}"

    return {"flaky": await ctx.step.run("flaky", flaky)}


async def _on_doomed_failure(ctx: inngest.Context) -> dict[str, object]:
    data = ctx.event.data
    return {
        "event": ctx.event.name,
        "function_id": data["function_id"],
        "run_id": data["run_id"],
        "error": data["error"],
        "original_event": data["event"]["name"],
    }


@client.create_function(
    fn_id="doomed", trigger=_trigger("doomed"), retries=3, on_failure=_on_doomed_failure
)
async def doomed(ctx: inngest.Context) -> str:
    # A retry (which must not happen) would complete the run instead of failing it.
    if ctx.attempt == 0:
        raise inngest.NonRetriableError("card declined for good")
    return f"retried on attempt {ctx.attempt}"


@client.create_function(
    fn_id="batched",
    trigger=_trigger("batched"),
    batch_events=inngest.Batch(max_size=3, timeout=datetime.timedelta(seconds=60)),
)
async def batched(ctx: inngest.Context) -> list[object]:
    return [e.data["n"] for e in ctx.events]


@client.create_function(
    fn_id="serial",
    trigger=_trigger("serial"),
    concurrency=[inngest.Concurrency(limit=1, key="event.data.tag")],
)
async def serial(ctx: inngest.Context) -> list[float]:
    async def work() -> list[float]:
        started = time.time()
        await asyncio.sleep(0.1)
        return [started, time.time()]

    return await ctx.step.run("work", work)


@client.create_function(
    fn_id="cancellable",
    trigger=_trigger("cancellable"),
    cancel=[inngest.Cancel(event="peer/stop", if_exp="async.data.tag == event.data.tag")],
)
async def cancellable(ctx: inngest.Context) -> str:
    await ctx.step.sleep("long-nap", datetime.timedelta(minutes=10))
    return "woke up"


@client.create_function(fn_id="bulky", trigger=_trigger("bulky"), retries=2)
async def bulky(ctx: inngest.Context) -> int:
    """A step output over the orchestrator's default limit (4 MB); this SDK checks none."""
    blob = await ctx.step.run("blob", lambda: "b" * ctx.event.data["size"])
    return len(blob)


FUNCTIONS = [
    loop,
    sleep,
    wait,
    sent,
    sender,
    child,
    invoker,
    parallel,
    retry,
    doomed,
    batched,
    serial,
    cancellable,
    bulky,
]

app = FastAPI()
inngest.fast_api.serve(app, client, FUNCTIONS)


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(os.environ["PEER_APP_PORT"]),
        log_level="warning",
        access_log=False,
    )
