"""A run's lifecycle: it starts, its pending ops resolve, it finishes.

A run has a set of *pending* ops (planned steps, sleeps, waits, invokes, signals); when the
last one resolves, exactly one discovery request is queued. Finishing a run clears what it
left queued or waiting, emits its system event (an effect of the unit) and resolves the
parent's `invoke` step.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from typing import Any

from ..errors import RunErrorName, run_error
from ..events import Event
from ..protocol import SystemEvent
from . import timeouts
from .flow_options import request_flow
from .ids import new_id
from .store import FunctionRecord, ItemKind, QueueItem, RunRecord, RunStatus, now_ms
from .unit import Unit

_log = logging.getLogger("durable.orchestrator")


def run_flow(unit: Unit, run: RunRecord) -> dict[str, Any] | None:
    """The flow control a later request of `run` carries."""
    return request_flow(unit.functions.get(run.fn_id), run.events, first=False)


def delay_ms(unit: Unit, attempt: int) -> int:
    """The backoff before retry `attempt + 1`, with jitter."""
    backoff = unit.backoff
    base = backoff[min(attempt, len(backoff) - 1)] if backoff else 0
    return int(base * 1000 * (1 + random.random() * 0.1))


async def schedule(unit: Unit, run_id: str, step: str, at: int, payload: dict[str, Any]) -> None:
    """Resume `step` at `at` with `payload["memo"]` (unless `only_if` says it resolved)."""
    await unit.tx.enqueue(run_id, ItemKind.RESUME, step=step, available_at=at, payload=payload)


async def start_run(
    unit: Unit,
    fn: FunctionRecord,
    events: list[dict[str, Any]],
    parent: tuple[str, str] | None = None,
    run_id: str | None = None,
) -> str:
    problem = unit.functions.problems.get(fn.fn_id)
    if problem is not None:
        return await _refuse(unit, fn, events, parent, problem)
    now = now_ms()
    flow = request_flow(fn, events, first=True)
    lease = unit.capacity.reserve() if unit.capacity is not None and flow is None else None
    run = RunRecord(
        run_id=run_id or new_id(),
        fn_id=fn.fn_id,
        app_id=fn.app_id,
        status=RunStatus.RUNNING if lease else RunStatus.QUEUED,
        events=events,
        created_at=now,
        started_at=now if lease else None,
        parent_run_id=parent[0] if parent else None,
        parent_step=parent[1] if parent else None,
    )
    await unit.tx.insert_run(run)
    await _start(unit, fn, run, flow, lease)
    return run.run_id


async def _refuse(
    unit: Unit,
    fn: FunctionRecord,
    events: list[dict[str, Any]],
    parent: tuple[str, str] | None,
    problem: str,
) -> str:
    """The run of a function whose config cannot work: it fails at once, saying why (the
    event is stored and every other function runs as usual)."""
    run = RunRecord(
        run_id=new_id(),
        fn_id=fn.fn_id,
        app_id=fn.app_id,
        status=RunStatus.QUEUED,
        events=events,
        created_at=now_ms(),
        parent_run_id=parent[0] if parent else None,
        parent_step=parent[1] if parent else None,
    )
    await unit.tx.insert_run(run)
    message = f"function {fn.fn_id} cannot run: {problem}; fix it and sync the app again"
    _log.error("%s", message)
    await finish(
        unit, run, RunStatus.FAILED, error=run_error(RunErrorName.INVALID_FUNCTION, message)
    )
    return run.run_id


async def begin(unit: Unit, fn: FunctionRecord, run: RunRecord) -> None:
    """Start a run held until now (debounced or batched) with its final events."""
    await unit.tx.update_run(run.run_id, events=run.events, reason=None)
    await _start(unit, fn, run, request_flow(fn, run.events, first=True), None)


async def _start(
    unit: Unit, fn: FunctionRecord, run: RunRecord, flow: dict[str, Any] | None, lease: int | None
) -> None:
    now = now_ms()
    unit.note("started", run.run_id, fn.fn_id)
    item_id = await unit.tx.enqueue(
        run.run_id, ItemKind.DISCOVERY, available_at=now, lease_until=lease, flow=flow
    )
    if lease:
        item = QueueItem(item_id, run.run_id, ItemKind.DISCOVERY, None, 0, now)
        unit.effects.taken.append((item, run))
    if fn.config.get("timeouts") or fn.config.get("cancel"):
        await timeouts.arm(unit.tx, fn, run)


async def resolve(unit: Unit, run_id: str, step: str, memo: Any) -> bool:
    """Store a memo (first write wins); queue one discovery when nothing else is pending."""
    tx = unit.tx
    run = await tx.lock_run(run_id)
    if run is None or run.status.finished or not await tx.put_memo(run_id, step, memo):
        return False
    await tx.end_history(run_id, step, now_ms(), memo)
    if await tx.remove_pending(run_id, step) == 0:
        payload = {"disable_immediate_execution": True} if run.batch_parallel else None
        await tx.enqueue(run_id, ItemKind.DISCOVERY, payload=payload, flow=run_flow(unit, run))
        await tx.update_run(run_id, status=RunStatus.RUNNING, reason=None, batch_parallel=False)
    return True


async def fail_unregistered(unit: Unit, run: RunRecord) -> None:
    """Fail a run whose function is no longer registered."""
    message = f"function {run.fn_id} is no longer registered; sync its app and rerun"
    error = run_error(RunErrorName.FUNCTION_NOT_FOUND, message)
    await finish(unit, run, RunStatus.FAILED, error=error)


async def finish(
    unit: Unit,
    run: RunRecord,
    status: RunStatus,
    *,
    output: Any = None,
    error: dict[str, Any] | None = None,
    reason: str | None = None,
) -> None:
    ended = now_ms()
    fields: dict[str, Any] = {"output": output, "error": error, "reason": reason}
    await unit.tx.update_run(run.run_id, status=status, ended_at=ended, **fields)
    await unit.tx.clear_run(run.run_id)
    unit.effects.finished.append(dataclasses.replace(run, status=status, ended_at=ended, **fields))
    unit.note(status.value, run.run_id, run.fn_id, error=error, reason=reason)
    unit.effects.emitted.append(_system_event(run, status, output, error, reason))
    if run.parent_run_id and run.parent_step:
        await resolve(unit, run.parent_run_id, run.parent_step, _child_memo(status, fields))


def _system_event(
    run: RunRecord, status: RunStatus, output: Any, error: Any, reason: str | None
) -> Event:
    data: dict[str, Any] = {"function_id": run.fn_id, "run_id": run.run_id}
    if status is RunStatus.COMPLETED:
        name, data["output"] = SystemEvent.FUNCTION_FINISHED, output
    elif status is RunStatus.FAILED:
        name, data["error"] = SystemEvent.FUNCTION_FAILED, error
    else:
        name, data["reason"] = SystemEvent.FUNCTION_CANCELLED, reason
    data["event"] = run.events[0]
    return Event(name=name, data=data)


def _child_memo(status: RunStatus, fields: dict[str, Any]) -> dict[str, Any]:
    """The memo an invoking parent gets for its child's ending."""
    if status is RunStatus.COMPLETED:
        return {"data": fields["output"]}
    failure = fields["error"] or run_error(
        RunErrorName.RUN_CANCELLED, fields["reason"] or "the invoked run was cancelled"
    )
    error = {"name": failure.get("name", "Error"), "message": failure.get("message", "")}
    if isinstance(failure.get("stack"), str):  # a stack is a string or absent, never null
        error["stack"] = failure["stack"]
    return {"error": error}
