"""Durable endpoints: runs an app starts itself, inside an HTTP request it is serving.

The TypeScript SDK runs such a function in the request ("sync step mode") and checkpoints as
it goes:

    POST /v1/checkpoint                   {run_id, event, steps, ts, request_version, retries}
        creates the run (its event is the HTTP request, `inngest/http.request`) with the steps
        already done; answers {"data": {fn_id, app_id, run_id, realtime_token}}
    POST /v1/checkpoint/{run_id}/steps    {fn_id, app_id, run_id, steps, ts}
        stores more finished steps; a `RunComplete` op ends the run with its `data` as output

Each step is stored once (its memo is first-write-wins, and its history is written only with
the memo), so a checkpoint sent again changes nothing. The run is listed in `/v1/runs` like any
other, under a function id made of the endpoint's host and path (no function is registered
for it). The answer has no `token`: a run cannot yet move from the app's request to the
orchestrator, so the SDK ends an endpoint that sleeps, waits or retries with an error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import pydantic
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import _bounded_json
from ..protocol import Opcode
from . import lifecycle
from .api_http import JsonAnswer, read_body
from .api_input import Problem, no_nul, validation
from .service import Orchestrator
from .store import HistoryRecord, RunRecord, RunStatus, now_ms
from .unit import Unit

__all__ = ["EndpointCheckpoints"]

Handler = Callable[[Request], Awaitable[Response]]

#: The ops a durable endpoint's checkpoint may carry.
STEP_OPS = (Opcode.STEP_RUN, Opcode.STEP_FAILED, Opcode.STEP_ERROR, Opcode.RUN_COMPLETE)
MAX_ID = 128


class StepIn(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    id: str = pydantic.Field(min_length=1, max_length=MAX_ID)
    op: str
    name: str | None = None
    displayName: str | None = None
    data: Any = None
    error: Any = None

    @pydantic.field_validator("op")
    @classmethod
    def _known(cls, op: str) -> str:
        if op not in STEP_OPS:
            known = ", ".join(STEP_OPS)
            raise ValueError(f"op {op!r} cannot be checkpointed by a durable endpoint ({known})")
        return op


class NewRunIn(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    run_id: str = pydantic.Field(min_length=1, max_length=MAX_ID)
    event: dict[str, Any]
    steps: list[StepIn] = pydantic.Field(default_factory=list)

    @pydantic.field_validator("event")
    @classmethod
    def _named(cls, event: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(event.get("name"), str) or not event["name"]:
            raise ValueError("the event needs a name")
        if not isinstance(event.get("data", {}), dict):
            raise ValueError("the event's data must be an object")
        return event


class StepsIn(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    steps: list[StepIn]


async def _read(request: Request, model: type[NewRunIn | StepsIn], what: str) -> Any:
    """The body as `model`. The SDK times its steps in nanoseconds (`timing`, past 2^53):
    any integer is read, and only what is stored (the event, each step's data and error)
    must keep within the limits every endpoint keeps."""
    try:
        raw = _bounded_json.loads(await read_body(request), exact_ints=False, allow_nul=False)
        body = model.model_validate(raw)
    except _bounded_json.BadJson as err:
        raise Problem(err.status, f"{what}: {err.where()}") from None
    except pydantic.ValidationError as err:
        raise validation(err, what) from None
    stored: list[tuple[str, Any]] = [("event", getattr(body, "event", None))]
    for i, step in enumerate(body.steps):
        stored += [(f"steps[{i}].data", step.data), (f"steps[{i}].error", step.error)]
    for where, value in stored:
        try:
            _bounded_json.check_value(value, allow_nul=False)
        except _bounded_json.BadJson as err:
            problem = err.where(where) if err.path else f"{where}: {err.reason}"
            raise Problem(400, f"{what}: {problem}") from None
    return body


def endpoint_ids(event: dict[str, Any]) -> tuple[str, str]:
    """The app id and function id of an endpoint's run: its host, and its host and path."""
    data = event.get("data") or {}
    host = urlsplit(str(data.get("domain") or "")).netloc or "endpoint"
    path = str(data.get("path") or "/")
    return host, f"{host}{path}"


async def store_steps(unit: Unit, run: RunRecord, steps: list[StepIn]) -> None:
    """Store each step once; a RunComplete ends the run with its data."""
    now = now_ms()
    for step in steps:
        name = step.displayName or step.name or step.id
        if step.op == Opcode.RUN_COMPLETE:
            if not run.status.finished:
                await lifecycle.finish(unit, run, RunStatus.COMPLETED, output=step.data)
                run = await unit.tx.get_run(run.run_id) or run
            continue
        if run.status.finished:
            raise Problem(409, f"run {run.run_id} has ended: step {name!r} comes too late")
        if step.op == Opcode.STEP_ERROR:  # an attempt that failed: its story, no memo
            rec = HistoryRecord(run.run_id, step.id, name, step.op, 0, now, now, None, step.error)
            await unit.tx.add_history(rec)
            continue
        memo = {"data": step.data} if step.op == Opcode.STEP_RUN else {"error": step.error}
        if await unit.tx.put_memo(run.run_id, step.id, memo):
            output = step.data if step.op == Opcode.STEP_RUN else None
            error = step.error if step.op == Opcode.STEP_FAILED else None
            rec = HistoryRecord(run.run_id, step.id, name, step.op, 0, now, now, output, error)
            await unit.tx.add_history(rec)


class EndpointCheckpoints:
    """The two checkpoint routes of durable endpoints; `authorize` checks a request's key."""

    def __init__(
        self,
        orch: Orchestrator,
        authorize: Callable[[Request], None],
        guard: Callable[[Handler], Handler],
    ) -> None:
        self.orch = orch
        self.authorize = authorize
        self.guard = guard

    def routes(self) -> list[Route]:
        return [
            Route("/v1/checkpoint", self.guard(self.new_run), methods=["POST"]),
            Route("/v1/checkpoint/{run_id}/steps", self.guard(self.steps), methods=["POST"]),
        ]

    async def new_run(self, request: Request) -> Response:
        self.authorize(request)
        body: NewRunIn = await _read(request, NewRunIn, "checkpoint")
        run_id = no_nul(body.run_id, "run_id")
        app_id, fn_id = endpoint_ids(body.event)

        async def apply(unit: Unit) -> None:
            run = await unit.tx.lock_run(run_id)
            if run is None:
                now = now_ms()
                event = {**body.event, "data": body.event.get("data") or {}}
                run = RunRecord(
                    run_id, fn_id, app_id, RunStatus.RUNNING, [event], now, started_at=now
                )
                await unit.tx.insert_run(run)
            elif run.fn_id != fn_id:
                raise Problem(409, f"run id {run_id!r} is another function's run")
            await store_steps(unit, run, body.steps)

        await self.orch.dispatcher.atomic(apply)
        data = {"fn_id": fn_id, "app_id": app_id, "run_id": run_id, "realtime_token": run_id}
        return JsonAnswer({"data": data})

    async def steps(self, request: Request) -> Response:
        self.authorize(request)
        run_id = no_nul(request.path_params["run_id"], "run_id")
        body: StepsIn = await _read(request, StepsIn, "checkpoint")

        async def apply(unit: Unit) -> None:
            run = await unit.tx.lock_run(run_id)
            if run is None:
                raise Problem(404, f"no run {run_id!r}: start it with POST /v1/checkpoint")
            await store_steps(unit, run, body.steps)

        await self.orch.dispatcher.atomic(apply)
        self.orch.wake()
        return JsonAnswer({"data": {"run_id": run_id}})
