"""Timers: a sleep ends, a wait, signal or invoke times out, a debounce or batch flushes, or a
run's timeout passes. Each fires as one queue item in one unit of work."""

from __future__ import annotations

from . import admission, lifecycle, timeouts
from .store import ItemKind, QueueItem, RunStatus
from .unit import Unit


async def fire(unit: Unit, item: QueueItem) -> None:
    if item.kind is ItemKind.FLUSH:
        await _flush(unit, item)
    elif item.kind is ItemKind.TIMEOUT:
        expired = await timeouts.expired(unit.tx, item)
        if expired is not None:
            run, reason = expired
            await lifecycle.finish(unit, run, RunStatus.CANCELLED, reason=reason)
    else:
        await _resume(unit, item)


async def _flush(unit: Unit, item: QueueItem) -> None:
    run = await admission.flush(unit.tx, item)
    if run is None:
        return
    fn = unit.functions.get(run.fn_id)
    if fn is None:
        await lifecycle.fail_unregistered(unit, run)
    else:
        await lifecycle.begin(unit, fn, run)


async def _resume(unit: Unit, item: QueueItem) -> None:
    """A sleep ended, or a wait, signal or invoke timed out: resolve its step."""
    tx = unit.tx
    if not await tx.delete_item(item.id):
        return
    payload = item.payload or {}
    assert item.step is not None
    only_if = payload.get("only_if")
    if only_if == "wait" and not await tx.remove_wait(item.run_id, item.step):
        return
    if only_if == "signal":
        # Resolve even when the run no longer holds the name: a run displaced by another's
        # `on_conflict="replace"` gets its timeout; a delivered signal's memo was stored
        # first and stands (first write wins).
        await tx.remove_signal(item.run_id, item.step)
    await lifecycle.resolve(unit, item.run_id, item.step, payload.get("memo"))
