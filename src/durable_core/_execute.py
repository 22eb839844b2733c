"""One execution request, from parsed body to outcome, shared by the serve handler, the test
harness and the in-process transport."""

from __future__ import annotations

import asyncio
import datetime as _dt
import inspect
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, Unpack

import pydantic

from . import _serialize, tracing
from ._driver import AsyncRunner, Outcome, Raised, Returned, run_sync
from ._durations import to_iso_utc
from ._engine import Ops, Replay
from ._limits import Budget, RunLimits, Usage
from ._steps import Checkpoints, Step, SyncCheckpoints, SyncStep
from .context import Context, ReplayAwareLogger, SyncContext
from .errors import (
    DurableError,
    LimitExceededError,
    RetryAfterError,
    SerializationError,
    error_payload,
)
from .events import Event
from .function import Function
from .protocol import Header
from .types import AsyncSender, Handler, JSONObject, SyncSender

if TYPE_CHECKING:
    from ._otel_spans import RunTrace

T = TypeVar("T")


class RequestCtx(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")

    run_id: str = pydantic.Field(min_length=1)
    fn_id: str | None = None
    attempt: int = pydantic.Field(default=0, ge=0)
    max_attempts: int | None = pydantic.Field(default=None, ge=1)
    disable_immediate_execution: bool = False
    #: The run's limits and what it has used (`_limits.Budget.to_wire`), from our orchestrator.
    limits: dict[str, Any] | None = None
    #: The queue item this request answers; with it, steps are checkpointed over HTTP.
    qi_id: str | None = None

    @pydantic.field_validator("qi_id", mode="before")
    @classmethod
    def _qi_id_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class ExecutionRequest(pydantic.BaseModel):
    """The body the orchestrator POSTs for one request of a run (protocol section 4)."""

    model_config = pydantic.ConfigDict(extra="allow")

    event: Event
    events: list[Event] | None = None
    steps: dict[str, Any] = pydantic.Field(default_factory=dict)
    ctx: RequestCtx
    use_api: bool = False
    version: int | None = None

    @pydantic.field_validator("steps", mode="before")
    @classmethod
    def _null_steps(cls, value: object) -> object:
        return {} if value is None else value


def is_async(handler: Handler) -> bool:
    """Whether `handler` (or the function a `functools.partial` wraps) is `async def`."""
    target: Any = handler
    while hasattr(target, "func"):
        target = target.func
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004
    )


def budget(fn: Function[Any], req: ExecutionRequest) -> Budget:
    """The run's limits as the orchestrator sent them; from another orchestrator, the
    function's own limits over the defaults, and what the request's memos hold."""
    sent = Budget.from_wire(req.ctx.limits) if req.ctx.limits else None
    if sent is not None:
        return sent
    own = fn.options.limits
    limits = own.over(RunLimits()) if own is not None else RunLimits()
    return Budget(limits, Usage.of(req.steps))


def _replay(
    fn: Function[Any], handler: Handler, req: ExecutionRequest, target: str | None, checkpoint: bool
) -> Replay:
    return Replay(
        req.steps,
        target=target,
        attempt=req.ctx.attempt,
        max_attempts=req.ctx.max_attempts or fn.attempts_of(handler),
        disable_immediate_execution=req.ctx.disable_immediate_execution,
        checkpoint=checkpoint,
        budget=budget(fn, req),
    )


def _output(fn: Function[Any], replay: Replay, outcome: Outcome) -> Outcome:
    """The function's output as JSON, refused here when it cannot be stored or is too large."""
    if not isinstance(outcome, Returned):
        return outcome
    try:
        value = _serialize.to_json_value(outcome.value, what=f"function {fn.local_id!r}")
        replay.budget.output(f"the output of function {fn.local_id!r}", value)
    except (SerializationError, LimitExceededError) as err:
        return Raised(err)
    return Returned(value)


def _common(fn: Function[Any], req: ExecutionRequest, replay: Replay) -> dict[str, Any]:
    extra = {"run_id": req.ctx.run_id, "fn_id": fn.id}
    return {
        "event": req.event,
        "events": req.events or [req.event],
        "run_id": req.ctx.run_id,
        "fn_id": fn.id,
        "attempt": req.ctx.attempt,
        "logger": ReplayAwareLogger(fn.app.logger, replay, extra),
    }


def _traced(fn: Function[Any], req: ExecutionRequest) -> RunTrace | None:
    """The run's trace for this request when tracing is on (its steps' spans join it)."""
    return tracing.run_started(fn.app.tracing, req.ctx.run_id, fn.id, req.event.name, req.event.ts)


def _trace_ended(
    run: RunTrace | None, replay: Replay, req: ExecutionRequest, outcome: Outcome
) -> Outcome:
    if run is not None:
        error = outcome.error if isinstance(outcome, Raised) else None
        returned = isinstance(outcome, Returned)
        tracing.run_ended(run, returned, error, req.ctx.attempt, replay.max_attempts)
    return outcome


async def execute_async(
    fn: Function[Any],
    handler: Handler,
    req: ExecutionRequest,
    target: str | None,
    sender: AsyncSender,
    checkpoint: Checkpoints | None = None,
) -> Outcome:
    replay = _replay(fn, handler, req, target, checkpoint is not None)
    runner = AsyncRunner(replay)
    step = Step(replay, fn.app.app_id, runner, sender, checkpoint)
    step.run_trace = run = _traced(fn, req)
    outcome = await runner.run(handler, Context(step=step, **_common(fn, req, replay)))
    return _trace_ended(run, replay, req, _output(fn, replay, outcome))


def execute_sync(
    fn: Function[Any],
    handler: Handler,
    req: ExecutionRequest,
    target: str | None,
    sender: SyncSender,
    checkpoint: SyncCheckpoints | None = None,
) -> Outcome:
    replay = _replay(fn, handler, req, target, checkpoint is not None)
    step = SyncStep(replay, fn.app.app_id, sender, checkpoint)
    step.run_trace = run = _traced(fn, req)
    outcome = run_sync(handler, SyncContext(step=step, **_common(fn, req, replay)), replay)
    return _trace_ended(run, replay, req, _output(fn, replay, outcome))


class Senders(TypedDict):
    """How a function run by `execute` sends events: from async code, and from sync code."""

    sender: AsyncSender
    sync_sender: SyncSender


async def execute(
    fn: Function[Any],
    handler: Handler,
    req: ExecutionRequest,
    target: str | None,
    *,
    checkpoint: Checkpoints | None = None,
    **senders: Unpack[Senders],
) -> Outcome:
    """Run one request from async code; sync handlers run in a worker thread.

    With `checkpoint`, consecutive steps run in this one request, each made durable through
    the hooks before the next starts (sync handlers reach them through this event loop).
    """
    if is_async(handler):
        return await execute_async(fn, handler, req, target, senders["sender"], checkpoint)
    sync_checkpoint: SyncCheckpoints | None = None
    if checkpoint is not None:
        loop = asyncio.get_running_loop()
        hooks = checkpoint

        async def record(op: JSONObject) -> None:
            await hooks.record(op)

        async def flush() -> None:
            await hooks.flush()

        sync_checkpoint = SyncCheckpoints(
            record=lambda op: asyncio.run_coroutine_threadsafe(record(op), loop).result(),
            flush=lambda: asyncio.run_coroutine_threadsafe(flush(), loop).result(),
        )

    return await asyncio.to_thread(
        execute_sync, fn, handler, req, target, senders["sync_sender"], sync_checkpoint
    )


def execute_blocking(
    fn: Function[Any],
    handler: Handler,
    req: ExecutionRequest,
    target: str | None,
    *,
    checkpoint: SyncCheckpoints | None = None,
    **senders: Unpack[Senders],
) -> Outcome:
    """Run one request from sync code; async handlers get an event loop of their own (whose
    checkpoints block it: it runs this request only)."""
    if is_async(handler):
        hooks: Checkpoints | None = None
        if checkpoint is not None:
            sync = checkpoint

            async def record(op: JSONObject) -> None:
                sync.record(op)

            async def flush() -> None:
                sync.flush()

            hooks = Checkpoints(record=record, flush=flush)
        coro = execute_async(fn, handler, req, target, senders["sender"], hooks)
        return run_coroutine_blocking(coro)
    return execute_sync(fn, handler, req, target, senders["sync_sender"], checkpoint)


def run_coroutine_blocking(coro: Coroutine[Any, Any, T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from a thread that already runs a loop: use a fresh thread for a fresh loop.
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as err:
            box["error"] = err

    thread = threading.Thread(target=target, name="durable-run")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


# -- outcome to wire ------------------------------------------------------------------------


class Wire(pydantic.BaseModel):
    """An outcome as status, headers and a JSON-able body."""

    status: int
    body: Any
    headers: dict[str, str] = pydantic.Field(default_factory=dict)


def to_wire(fn: Function[Any], outcome: Outcome) -> Wire:
    if isinstance(outcome, Ops):
        return Wire(status=206, body=outcome.ops)
    if isinstance(outcome, Returned):
        try:
            value = _serialize.to_json_value(outcome.value, what=f"function {fn.local_id!r}")
        except SerializationError as err:
            outcome = Raised(err)
        else:
            return Wire(status=200, body=value)
    assert isinstance(outcome, Raised)
    failure = outcome.error
    headers: dict[str, str] = {}
    if isinstance(failure, DurableError) and not failure.retriable:
        headers[Header.NO_RETRY] = "true"
    if isinstance(failure, RetryAfterError):
        headers[Header.RETRY_AFTER] = to_iso_utc(failure.retry_at.astimezone(_dt.UTC))
    return Wire(status=500, body=error_payload(failure), headers=headers)
