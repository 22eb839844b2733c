"""Answers: what the orchestrator does with an app's answer to one request.

200 completes the run; 206 carries opcodes, each handled by one small function in `HANDLERS`;
anything else is the function's own error, retried with backoff until its attempts run out.
An answer with anything over the run's limits (`limits.over_limit`) fails the run at once and
stores none of it.
Ops that put the run to wait (planned steps, sleeps, waits, invokes, signals) become its
pending set; when that set empties, `lifecycle.resolve` queues the next discovery.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
from collections.abc import Awaitable, Callable
from typing import Any

from .._limits import RunLimits, Usage
from ..errors import RunErrorName, run_error
from ..protocol import Header, Opcode, SystemEvent
from . import expressions, gateway, lifecycle, limits
from .flow_options import duration_ms
from .ids import new_id
from .moments import parse_time, retry_at
from .store import HistoryRecord, ItemKind, QueueItem, RunRecord, RunStatus, WaitRecord, now_ms
from .transport import CallResult
from .unit import Unit

WAIT_DEFAULT_MS = 7 * 24 * 3600 * 1000  # a wait without a timeout


def _ms(duration: str | None, default_ms: int) -> int:
    return duration_ms(duration) if duration else default_ms


async def apply(
    unit: Unit,
    item: QueueItem,
    run: RunRecord,
    res: CallResult,
    started: int,
    bounds: RunLimits | None = None,
    usage: Usage | None = None,
) -> None:
    """Advance `run` with the app's answer to `item` (the item is consumed). `bounds` are the
    run's limits and `usage` what it had stored before this answer."""
    if not await unit.tx.delete_item(item.id):
        return  # its lease ran out and another worker answered it already
    overrun = None
    if not res.within_limits:
        overrun = limits.over_limit(res, bounds or RunLimits(), usage or Usage())
    if overrun is not None:
        await _over_limit(unit, item, run, overrun, started)
    elif res.status == 200:
        await lifecycle.finish(unit, run, RunStatus.COMPLETED, output=res.body)
    elif (
        res.status == 206
        and isinstance(res.body, list)
        and all(isinstance(o, dict) and "op" in o for o in res.body)
    ):
        retry_after = res.headers.get(Header.RETRY_AFTER) or ""
        await _apply_ops(_Answer(unit, item, run, started, retry_after=retry_after), res.body)
    else:
        await _function_error(unit, item, run, res, started)


async def _over_limit(
    unit: Unit, item: QueueItem, run: RunRecord, overrun: limits.Overrun, started: int
) -> None:
    """Fail the run with the limit it went over, recorded on the step that did (if one did)."""
    op = overrun.op or {}
    step = str(op.get("id") or item.step or "function")
    name = str(op.get("displayName") or op.get("name") or step)
    if not op and item.step is None:
        name = "(function)"
    kind = str(op.get("op") or "FunctionError")
    rec = HistoryRecord(
        run.run_id, step, name, kind, item.attempt, started, now_ms(), None, overrun.error
    )
    await unit.tx.add_history(rec)
    await lifecycle.finish(unit, run, RunStatus.FAILED, error=overrun.error)


async def _function_error(
    unit: Unit, item: QueueItem, run: RunRecord, res: CallResult, started: int
) -> None:
    body = res.body if isinstance(res.body, dict) else {"message": str(res.body)}
    error = limits.clip_error(
        {
            "name": str(body.get("name") or "Error"),
            "message": str(body.get("message") or f"HTTP {res.status}"),
            "stack": body.get("stack"),
        }
    )
    if res.status == 206:
        error = run_error(
            RunErrorName.INVALID_RESPONSE, f"206 without opcodes: {str(res.body)[:500]}"
        )
    # A failed attempt of the whole request is part of the run's story too.
    step = item.step or "function"
    name = "(function)" if item.step is None else step
    rec = HistoryRecord(
        run.run_id, step, name, "FunctionError", item.attempt, started, now_ms(), None, error,
        queued_at=item.available_at,
    )  # fmt: skip
    await unit.tx.add_history(rec)
    fn = unit.functions.get(run.fn_id)
    max_attempts = (fn.retries if fn else 0) + 1
    no_retry = res.headers.get(Header.NO_RETRY) == "true" or (res.status == 404 and fn is None)
    if no_retry or item.attempt + 1 >= max_attempts:
        await lifecycle.finish(unit, run, RunStatus.FAILED, error=error)
        return
    when = now_ms() + lifecycle.delay_ms(unit, item.attempt)
    at = retry_at(res.headers.get(Header.RETRY_AFTER) or "", now_ms())
    if at is not None:
        when = max(at, now_ms())
    await _retry(unit, item, run, when)
    fields = {"attempt": item.attempt + 1, "error": error, "retry_at": when}
    unit.note("retrying", run.run_id, run.fn_id, name, **fields)
    reason = f"retrying at attempt {item.attempt + 1}: {str(error['message'])[:200]}"
    await unit.tx.update_run(run.run_id, reason=reason)


async def _retry(unit: Unit, item: QueueItem, run: RunRecord, when: int) -> None:
    await unit.tx.enqueue(
        run.run_id,
        item.kind,
        step=item.step,
        attempt=item.attempt + 1,
        available_at=when,
        payload=item.payload,
        flow=lifecycle.run_flow(unit, run),
    )


@dataclasses.dataclass
class _Answer:
    """One 206 answer being applied: what its ops leave pending, and why the run waits."""

    unit: Unit
    item: QueueItem
    run: RunRecord
    started: int
    retry_after: str = ""  # the answer's `retry-after` header: when a StepError may retry
    now: int = dataclasses.field(default_factory=now_ms)
    waiting: list[str] = dataclasses.field(default_factory=list)
    reasons: list[str] = dataclasses.field(default_factory=list)
    # Ops answered at once (an invoke of an unknown function, a signal already waited for):
    # resolved after the whole batch is pending, so fan-in counts every op.
    immediate: list[tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    #: The run has ended (failed, or completed by RunComplete): later ops are not applied.
    failed: bool = False
    again: bool = False  # the app asked to be called again (`DiscoveryRequest`)

    async def history(self, step: str, name: str, kind: str) -> None:
        rec = HistoryRecord(self.run.run_id, step, name, kind, 0, self.now, None)
        await self.unit.tx.add_history(rec)

    def note(self, event: str, op: _Op, **fields: Any) -> None:
        self.unit.note(event, self.run.run_id, self.run.fn_id, op.name, **fields)

    async def timer(self, step: str, at: int, payload: dict[str, Any]) -> None:
        await lifecycle.schedule(self.unit, self.run.run_id, step, at, payload)


class _Op:
    """One opcode of the answer, with the fields every handler reads."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.kind, self.step = str(raw.get("op")), str(raw.get("id"))
        self.name = str(raw.get("displayName") or raw.get("name") or self.step)
        opts = raw.get("opts")
        self.opts: dict[str, Any] = opts if isinstance(opts, dict) else {}


async def _step_ran(a: _Answer, op: _Op) -> None:
    """StepRun, StepFailed and StepError: the step ran in this request."""
    data = op.raw.get("data") if op.kind == Opcode.STEP_RUN else None
    error = limits.clip_error(op.raw.get("error"))
    rec = HistoryRecord(
        a.run.run_id, op.step, op.name, op.kind, a.item.attempt, a.started, a.now, data, error,
        queued_at=a.item.available_at,
    )  # fmt: skip
    if op.kind == Opcode.STEP_ERROR:
        await a.unit.tx.add_history(rec)
        when = a.now + lifecycle.delay_ms(a.unit, a.item.attempt)
        at = retry_at(a.retry_after, a.now)
        when = when if at is None else max(at, a.now)
        await _retry(a.unit, a.item, a.run, when)
        a.note("retrying", op, attempt=a.item.attempt + 1, error=error, retry_at=when)
        a.reasons.append(f"step {op.name!r} failed (attempt {a.item.attempt + 1}), retrying")
        return
    memo = {"data": data} if op.kind == Opcode.STEP_RUN else {"error": error}
    if a.item.kind is ItemKind.STEP:
        await a.unit.tx.add_history(rec)
        await lifecycle.resolve(a.unit, a.run.run_id, op.step, memo)
    elif await a.unit.tx.put_memo(a.run.run_id, op.step, memo):  # once, if checkpointed too
        await a.unit.tx.add_history(rec)
    else:
        return
    done = op.kind == Opcode.STEP_RUN
    a.note("step_done" if done else "step_failed", op, error=None if done else error)


async def _run_complete(a: _Answer, op: _Op) -> None:
    """RunComplete: the function returned `data`, after the steps before it in the answer."""
    await lifecycle.finish(a.unit, a.run, RunStatus.COMPLETED, output=op.raw.get("data"))
    a.failed = True  # the run has ended: nothing after this op applies


async def _planned(a: _Answer, op: _Op) -> None:
    a.waiting.append(op.step)
    flow = lifecycle.run_flow(a.unit, a.run)
    await a.unit.tx.enqueue(a.run.run_id, ItemKind.STEP, step=op.step, flow=flow)


async def _sleep(a: _Answer, op: _Op) -> None:
    wake = parse_time(str(op.raw.get("name") or ""))
    duration = op.opts.get("duration")
    if wake is None and duration:
        wake = parse_time(str(duration))  # a duration, or an RFC 3339 time
    if wake is None and not duration:  # the TypeScript SDK names the duration: "2s"
        with contextlib.suppress(ValueError, TypeError):
            wake = a.now + duration_ms(str(op.raw.get("name") or ""))
    if wake is None:
        wake = a.now + _ms(duration, 0)
    a.waiting.append(op.step)
    await a.history(op.step, op.name, op.kind)
    await a.timer(op.step, wake, {"memo": None})
    until = _dt.datetime.fromtimestamp(wake / 1000, _dt.UTC).isoformat()
    a.reasons.append(f"sleeping until {until}")
    a.note("sleeping", op, until=wake)


async def _wait_for_event(a: _Answer, op: _Op) -> None:
    event_name = str(op.opts.get("event") or op.raw.get("name"))
    expr, trigger = op.opts.get("if"), a.run.events[0]
    problem = expressions.problem(expr, expressions.EVENT_AND_ASYNC)
    if problem is not None:  # a wait that could never match is not stored: its step fails
        await a.history(op.step, op.name, op.kind)
        what = f"step {op.name!r}: the wait's condition"
        message = f"{what}: {problem}" if isinstance(expr, str) else f"{what} {expr!r} {problem}"
        err = run_error(RunErrorName.INVALID_EXPRESSION, message)
        a.immediate.append((op.step, {"error": err}))
        return
    expires = a.now + _ms(op.opts.get("timeout"), WAIT_DEFAULT_MS)
    wait = WaitRecord(a.run.run_id, op.step, event_name, expr, trigger, expires)
    await a.unit.tx.add_wait(wait, expressions.index_term(expr, trigger))
    a.waiting.append(op.step)
    await a.history(op.step, op.name, op.kind)
    await a.timer(op.step, expires, {"memo": None, "only_if": "wait"})
    a.reasons.append(f"waiting for event {event_name!r}")
    a.note("waiting", op, waiting_for=f"event {event_name!r}", until=expires)


async def _wait_for_signal(a: _Answer, op: _Op) -> None:
    signal = str(op.opts.get("signal") or "")
    await a.history(op.step, op.name, op.kind)
    replace = op.opts.get("conflict") != "fail"
    if not await a.unit.tx.add_signal(signal, a.run.run_id, op.step, replace):
        err = run_error(
            RunErrorName.SIGNAL_CONFLICT,
            f"step {op.name!r}: another run already waits for signal {signal!r} and "
            'on_conflict is "fail"',
        )
        a.immediate.append((op.step, {"error": err}))
        return
    a.waiting.append(op.step)
    expires = a.now + _ms(op.opts.get("timeout"), WAIT_DEFAULT_MS)
    await a.timer(op.step, expires, {"memo": None, "only_if": "signal"})
    a.reasons.append(f"waiting for signal {signal!r}")
    a.note("waiting", op, waiting_for=f"signal {signal!r}", until=expires)


async def _invoke(a: _Answer, op: _Op) -> None:
    """Start the child run, or answer the step at once when there is nothing to invoke."""
    await a.history(op.step, op.name, op.kind)
    fn_id = str(op.opts.get("function_id") or "")
    fn = a.unit.functions.get(fn_id)
    if fn is None:
        err = run_error(
            RunErrorName.FUNCTION_NOT_FOUND,
            f"cannot invoke {fn_id!r}: no such function is registered",
        )
        a.immediate.append((op.step, {"error": err}))
        return
    payload = op.opts.get("payload") or {}
    event = {
        "name": SystemEvent.FUNCTION_INVOKED,
        "data": payload.get("data") or {},
        "id": new_id(),
        "ts": now_ms(),
    }
    child = await lifecycle.start_run(a.unit, fn, [event], parent=(a.run.run_id, op.step))
    timeout = op.opts.get("timeout")
    if timeout:
        err = run_error(
            RunErrorName.INVOKE_TIMEOUT, f"invoked function {fn_id} did not finish within {timeout}"
        )
        await a.timer(op.step, now_ms() + _ms(timeout, 0), {"memo": {"error": err}})
    a.waiting.append(op.step)
    a.reasons.append(f"waiting for invoked run {child} of {fn_id}")
    a.note("waiting", op, waiting_for=f"invoked run {child} of {fn_id}")


async def _gateway(a: _Answer, op: _Op) -> None:
    """AIGateway and Gateway: the orchestrator makes the request (`gateway.py`), not the app."""
    await a.history(op.step, op.name, op.kind)
    req = gateway.parse(op.kind, op.opts)
    if isinstance(req, str):  # no attempt can work: the step fails at once
        err = run_error(RunErrorName.GATEWAY_ERROR, f"step {op.name!r}: {req}")
        a.immediate.append((op.step, {"error": err}))
        return
    await gateway.enqueue(a.unit, a.run.run_id, op.step, req.to_payload(op.name))
    a.waiting.append(op.step)
    a.reasons.append(f"step {op.name!r}: waiting for {req.method} {gateway.where(req.url)[:200]}")


async def _discovery_request(a: _Answer, op: _Op) -> None:
    a.again = True


async def _fail_run(a: _Answer, op: _Op, name: RunErrorName, message: str) -> None:
    """An op no retry can help: the run fails, saying why."""
    rec = HistoryRecord(
        a.run.run_id, op.step, op.name, op.kind, a.item.attempt, a.started, a.now,
        None, {"message": message},
    )  # fmt: skip
    await a.unit.tx.add_history(rec)
    error = run_error(name, message)
    await lifecycle.finish(a.unit, a.run, RunStatus.FAILED, error=error)
    a.failed = True


async def _step_not_found(a: _Answer, op: _Op) -> None:
    target = a.item.step or op.step
    message = (
        f"the app could not find step {target!r}, which it was asked to run: the function no "
        "longer reaches it (renamed or removed while this run was in flight?). Rerun the run "
        "with the current code"
    )
    await _fail_run(a, op, RunErrorName.STEP_NOT_FOUND, message)


async def _defer(a: _Answer, op: _Op) -> None:
    message = (
        f"the SDK sent opcode {op.kind!r} (TypeScript `defer()`, step {op.name!r}), which this "
        "orchestrator does not support: deferred functions are not scheduled here; call "
        "step.invoke or step.sendEvent instead"
    )
    await _fail_run(a, op, RunErrorName.UNSUPPORTED_OPCODE, message)


async def _unsupported(a: _Answer, op: _Op) -> None:
    message = f"the SDK sent opcode {op.kind!r}, which this orchestrator does not support"
    await _fail_run(a, op, RunErrorName.UNSUPPORTED_OPCODE, message)


Handler = Callable[[_Answer, _Op], Awaitable[None]]

HANDLERS: dict[str, Handler] = {
    Opcode.STEP_RUN: _step_ran,
    Opcode.STEP_FAILED: _step_ran,
    Opcode.STEP_ERROR: _step_ran,
    Opcode.STEP_PLANNED: _planned,
    Opcode.SLEEP: _sleep,
    Opcode.WAIT_FOR_EVENT: _wait_for_event,
    Opcode.WAIT_FOR_SIGNAL: _wait_for_signal,
    Opcode.INVOKE: _invoke,
    Opcode.RUN_COMPLETE: _run_complete,
    Opcode.AI_GATEWAY: _gateway,
    Opcode.GATEWAY: _gateway,
    Opcode.DISCOVERY_REQUEST: _discovery_request,
    Opcode.STEP_NOT_FOUND: _step_not_found,
    Opcode.DEFER_ADD: _defer,
    Opcode.DEFER_ABORT: _defer,
}


# The duration field of each op that has one.
_TIMED: dict[str, str] = {
    Opcode.SLEEP: "duration",
    Opcode.WAIT_FOR_EVENT: "timeout",
    Opcode.WAIT_FOR_SIGNAL: "timeout",
    Opcode.INVOKE: "timeout",
}


def _bad_duration(op: _Op) -> str | None:
    """What is wrong with the op's duration (None if nothing): an op no retry can fix."""
    field = _TIMED.get(op.kind)
    value = op.opts.get(field) if field else None
    if not value or (op.kind == Opcode.SLEEP and parse_time(str(value)) is not None):
        return None
    try:
        duration_ms(value)
    except ValueError:
        return f"step {op.name!r}: opts.{field} {value!r} is not a duration"
    return None


async def _apply_ops(a: _Answer, ops: list[dict[str, Any]]) -> None:
    for raw in ops:
        op = _Op(raw)
        bad = _bad_duration(op)
        if bad is not None:  # the step gets the error at once, instead of the unit failing
            await a.history(op.step, op.name, op.kind)
            a.immediate.append((op.step, {"error": run_error(RunErrorName.INVALID_RESPONSE, bad)}))
            continue
        await HANDLERS.get(op.kind, _unsupported)(a, op)
        if a.failed:
            return
    kinds = {str(raw.get("op")) for raw in ops}
    if a.again and a.item.kind is ItemKind.STEP and a.item.step not in {o.get("id") for o in ops}:
        # A step request the app did not answer for its step: ask again (a discovery request
        # is queued anyway when nothing is pending, by `_settle`).
        await _retry_same(a)
    await _settle(a, planned=Opcode.STEP_PLANNED in kinds, retried=Opcode.STEP_ERROR in kinds)


async def _retry_same(a: _Answer) -> None:
    flow = lifecycle.run_flow(a.unit, a.run)
    item = a.item
    await a.unit.tx.enqueue(
        a.run.run_id, item.kind, step=item.step, attempt=item.attempt, payload=item.payload,
        flow=flow,
    )  # fmt: skip


async def _settle(a: _Answer, planned: bool, retried: bool) -> None:
    """Set the run's status and pending set after all its ops are applied."""
    tx, run_id = a.unit.tx, a.run.run_id
    if a.waiting or a.immediate:
        await tx.add_pending(run_id, a.waiting + [step for step, _ in a.immediate])
        sleeping = bool(a.reasons) and all(r.startswith("sleeping") for r in a.reasons)
        status = RunStatus.SLEEPING if sleeping else RunStatus.WAITING
        if planned:
            status = RunStatus.RUNNING
        batch_parallel = len(a.waiting) + len(a.immediate) > 1
        reason = "; ".join(a.reasons) or None
        await tx.update_run(run_id, status=status, reason=reason, batch_parallel=batch_parallel)
        for step, memo in a.immediate:
            await lifecycle.resolve(a.unit, run_id, step, memo)
    elif a.item.kind is ItemKind.DISCOVERY and not retried:
        await tx.enqueue(run_id, ItemKind.DISCOVERY, flow=lifecycle.run_flow(a.unit, a.run))
        await tx.update_run(run_id, status=RunStatus.RUNNING, reason=None)
    elif a.reasons:
        await tx.update_run(run_id, reason="; ".join(a.reasons))
