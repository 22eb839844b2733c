"""Intake: an event is stored, starts the functions it triggers, and resolves the waits it
matches; a cron tick starts its run. Waits are matched in one order everywhere (run, step),
so two intakes of one store cannot deadlock."""

from __future__ import annotations

import logging
from typing import Any

from ..errors import RunErrorName, run_error
from ..events import Event
from ..protocol import SystemEvent
from . import admission, expressions, lifecycle, timeouts
from .ids import new_id
from .store import EventRecord, FunctionRecord, RunStatus, WaitRecord, now_ms
from .unit import Unit

_log = logging.getLogger("durable.orchestrator")

DEDUPE_MS = 24 * 3600 * 1000


def event_wire(rec: EventRecord) -> dict[str, Any]:
    wire = dict(rec.raw)
    wire.update({"name": rec.name, "data": rec.data, "id": rec.event_id, "ts": rec.ts})
    return wire


async def ingest(unit: Unit, events: list[Event]) -> list[str]:
    """Store `events` and act on each; the events' internal ids."""
    ids = []
    for event in events:
        now, internal = now_ms(), new_id()
        raw = event.model_dump(mode="json", exclude_none=True)
        rec = EventRecord(
            internal, event.name, event.data, event.id or internal, event.ts or now, now, raw
        )
        await unit.tx.insert_event(rec)
        ids.append(internal)
        wire = event_wire(rec)
        await _trigger(unit, wire, event.id, now)
        await _match_waits(unit, wire)
    return ids


async def _trigger(unit: Unit, wire: dict[str, Any], event_id: str | None, now: int) -> None:
    started: set[str] = set()  # one run per function, however many triggers match
    for fn, expr in unit.functions.triggered_by(wire["name"]):
        if fn.fn_id in started:
            continue
        broken = fn.fn_id in unit.functions.problems  # its run fails, saying why
        if not broken and not expressions.matches(expr, {"event": wire}):
            continue
        started.add(fn.fn_id)
        if event_id and not await unit.tx.claim_key(f"event:{fn.fn_id}", event_id, now + DEDUPE_MS):
            continue
        await admit(unit, fn, wire)


async def _match_waits(unit: Unit, wire: dict[str, Any]) -> None:
    tx = unit.tx
    waits = sorted(await tx.candidate_waits(wire), key=lambda w: (w.run_id, w.step))
    for wait in waits:
        variables = {"event": wait.trigger_event, "async": wire}
        listener = wait.step.startswith(timeouts.CANCEL_STEP)
        if listener and not timeouts.cancels(wait, wire):
            continue
        broken = expressions.problem(wait.expression, expressions.EVENT_AND_ASYNC)
        if broken is None and not expressions.matches(wait.expression, variables):
            continue
        if not await tx.remove_wait(wait.run_id, wait.step):
            continue
        if broken is not None:  # stored before expressions were checked: only it fails
            await _broken_wait(unit, wait, broken)
        elif listener:
            await _cancel_by_event(unit, wait.run_id, wire)
        else:
            await lifecycle.resolve(unit, wait.run_id, wait.step, wire)


async def _broken_wait(unit: Unit, wait: WaitRecord, problem: str) -> None:
    """A wait whose expression cannot be evaluated: its step resolves with the error (a
    cancel listener is dropped, and said so in the log)."""
    if wait.step.startswith(timeouts.CANCEL_STEP):
        _log.error("run %s: a cancel listener is dropped: its condition: %s", wait.run_id, problem)
        return
    error = run_error(RunErrorName.INVALID_EXPRESSION, f"the wait's condition: {problem}")
    await lifecycle.resolve(unit, wait.run_id, wait.step, {"error": error})


async def _cancel_by_event(unit: Unit, run_id: str, event: dict[str, Any]) -> None:
    run = await unit.tx.lock_run(run_id)
    if run is not None and not run.status.finished:
        reason = f"cancelled by event {event['name']!r} (id {event.get('id')})".replace("'", '"')
        await lifecycle.finish(unit, run, RunStatus.CANCELLED, reason=reason)


async def admit(unit: Unit, fn: FunctionRecord, event: dict[str, Any]) -> str:
    """Carry out what admission decides for `fn` and `event`; the run's id."""
    if fn.fn_id in unit.functions.problems:
        return await lifecycle.start_run(unit, fn, [event])  # it fails at once, saying why
    decision = await admission.admit(unit.tx, fn, event)
    if decision.replace is not None:
        holder, reason = decision.replace
        await lifecycle.finish(unit, holder, RunStatus.CANCELLED, reason=reason)
    if decision.action == "start":
        return await lifecycle.start_run(unit, fn, [event], run_id=decision.run_id)
    if decision.action == "begin":
        assert decision.run is not None
        await lifecycle.begin(unit, fn, decision.run)
    return decision.run_id


async def fire_cron(unit: Unit, fn: FunctionRecord, spec: str, tick: int) -> bool:
    """Start the run of `tick` unless a process did already (or a later tick ran)."""
    if not await unit.tx.advance_key("cron", f"{fn.fn_id}|{spec}", tick):
        return False
    event = {
        "name": SystemEvent.SCHEDULED_TIMER,
        "data": {"cron": spec},
        "id": new_id(),
        "ts": tick,
    }
    await admit(unit, fn, event)
    return True
