"""The checkpoint API for requests the orchestrator dispatched over HTTP:

    POST /v1/checkpoint/{run_id}/async
        {"run_id", "fn_id", "qi_id", "request_id", "generation_id", "request_started_at",
         "steps": [{"op": "StepRun", "id": <hashed step id>, "displayName", "data"}, ...], "ts"}

An SDK running a request (`ctx.qi_id` names its queue item) posts the steps it finished, one
checkpoint before the next step runs, so one request runs a chain of steps. The answer is 200
`{"ok": true, "steps": n}` once every step is durable (a step stored before is not stored
again: the first result stays). A request that is no longer current (its queue item is
gone, no longer leased, or of another run, or the run has ended) gets 409: the SDK stops it.
Steps over the run's limits get 413 and nothing of that checkpoint is stored. Authentication is
that of the rest of `/v1`, checked before the body is read; a bad body is a 400 naming the field.

The request may be in flight in this process (its `StepBuffer` is in `Dispatcher.requests`) or
in another process sharing the store: either way the steps go through a `StepBuffer`, which
stores each with a check that the queue item is still leased, so currency comes from the store.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pydantic
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .._limits import Budget, Usage
from ..errors import CheckpointError, LimitExceededError, RunCancelledError
from ..protocol import Opcode
from . import limits
from .api_http import JsonAnswer, guarded, read_json
from .api_input import Problem, no_nul, validation
from .checkpoints import StepBuffer
from .service import Orchestrator

PATH = "/v1/checkpoint/{run_id}/async"


class StepIn(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    op: str = pydantic.Field(min_length=1)
    id: str = pydantic.Field(min_length=1)
    name: str | None = None
    displayName: str | None = None
    data: Any = None


class CheckpointIn(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    run_id: str | None = None
    fn_id: str | None = None
    qi_id: str | int
    steps: list[StepIn]


def _item_id(qi_id: str | int) -> tuple[int, str | None]:
    """The queue item and the process that dispatched it (`<id>` or `<id>.<owner>`)."""
    text, _, owner = str(qi_id).partition(".")
    if (
        not text.isascii()
        or not text.isdigit()
        or len(text) > 18
        or len(owner) > 64
        or not all(c in "0123456789abcdef" for c in owner)
    ):
        raise Problem(400, f"checkpoint: qi_id: {qi_id!r} is not a queue item of this orchestrator")
    return int(text), owner or None


def _stale(run_id: str, why: str) -> Problem:
    return Problem(409, f"stale dispatch: the request of run {run_id} {why}; stop it")


class CheckpointApi:
    def __init__(self, orch: Orchestrator, authorize: Any) -> None:
        self.orch = orch
        self._authorize = authorize

    def routes(self) -> list[Route]:
        return [Route(PATH, guarded(self.orch.store, self.checkpoint), methods=["POST"])]

    async def checkpoint(self, request: Request) -> Response:
        self._authorize(request)
        run_id = no_nul(str(request.path_params["run_id"]), "run id")
        try:
            body = CheckpointIn.model_validate(await read_json(request, "checkpoint"))
        except pydantic.ValidationError as err:
            raise validation(err, "checkpoint") from None
        if body.run_id is not None and body.run_id != run_id:
            raise Problem(400, f"checkpoint: run_id {body.run_id!r} is not the run of the path")
        for i, step in enumerate(body.steps):
            if step.op != Opcode.STEP_RUN:
                raise Problem(
                    400,
                    f"checkpoint: steps.{i}.op: only {Opcode.STEP_RUN} ops are checkpointed, not "
                    f"{step.op!r}; send it in the request's answer",
                )
            no_nul(step.id, f"checkpoint: steps.{i}.id")
        item_id, owner = _item_id(body.qi_id)
        buffer = self.orch.dispatcher.requests.get(item_id)
        foreign = buffer is None or buffer.item.run_id != run_id
        if buffer is None or foreign:
            buffer = await self._foreign(run_id, item_id, owner)
        ops = [step.model_dump(exclude_none=True) | {"data": step.data} for step in body.steps]
        saved = dataclasses.replace(buffer.budget.usage)
        try:
            for op in ops:
                buffer.admit(op)
        except LimitExceededError as err:
            buffer.budget.usage = saved
            raise Problem(413, f"checkpoint: {err}") from None
        try:
            for op in ops:
                await buffer.record(op)
            await buffer.flush()
        except RunCancelledError:
            raise _stale(run_id, "was superseded or its run has ended") from None
        except CheckpointError as err:
            if buffer.closed is not None:
                raise _stale(run_id, buffer.closed) from None
            raise Problem(503, f"checkpoint: {err}") from None
        if foreign and buffer.item.attempt:  # its answer reports a later step's attempt
            async with self.orch.store.transaction() as tx:
                await tx.reset_attempt(item_id)
        return JsonAnswer({"ok": True, "steps": len(ops)})

    async def _foreign(self, run_id: str, item_id: int, owner: str | None) -> StepBuffer:
        """A buffer for a request this process did not dispatch (or no longer runs), if that
        request is current as the store sees it."""
        async with self.orch.store.snapshot() as tx:
            item = await tx.get_item(item_id)
            run = await tx.get_run(run_id)
            used = await tx.memo_usage(run_id) if item is not None and run is not None else (0, 0)
        if run is None:
            raise Problem(404, f"no run {run_id!r}")
        if item is None or item.run_id != run_id:
            raise _stale(run_id, f"has no queue item {item_id} (it was answered or superseded)")
        if run.status.finished:
            raise _stale(run_id, f"is over: the run is {run.status.value}")
        fn = self.orch.functions.get(run.fn_id)
        if fn is None:
            raise _stale(run_id, f"is of function {run.fn_id!r}, which is no longer registered")
        bounds = limits.for_function(fn, self.orch.dispatcher.limits.run)
        budget = Budget(bounds, Usage(*used))
        return StepBuffer(self.orch.store, self.orch.watchers, item, fn, budget, True, owner)


__all__ = ["PATH", "CheckpointApi", "CheckpointIn"]
