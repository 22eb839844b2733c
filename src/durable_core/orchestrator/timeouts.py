"""A run's timeouts and cancel listeners: armed when it starts, checked when they fire.

`timeouts.start` and `timeouts.finish` are TIMEOUT timers; a `cancel` option is a wait (the
same index as `wait_for_event`) whose match cancels the run. A listener never hears the event
that created its run, and stops at its timeout.
"""

from __future__ import annotations

from typing import Any

from . import expressions
from .flow_options import DAY_MS, compact, duration_ms
from .store import FunctionRecord, ItemKind, QueueItem, RunRecord, Tx, WaitRecord, now_ms

FOREVER_MS = 100 * 365 * DAY_MS  # a cancel listener without a timeout
CANCEL_STEP = "cancel:"  # the step name of a cancel listener (step ids are hashes, never this)


async def arm(tx: Tx, fn: FunctionRecord, run: RunRecord) -> None:
    """Set a starting run's timeouts and cancel listeners."""
    cfg, now = fn.config, now_ms()
    timeouts = cfg.get("timeouts") or {}
    for which in ("start", "finish"):
        if timeouts.get(which):
            ms = duration_ms(timeouts[which])
            await tx.enqueue(
                run.run_id,
                ItemKind.TIMEOUT,
                available_at=now + ms,
                payload={"which": which, "ms": ms},
            )
    for i, cancel in enumerate(cfg.get("cancel") or []):
        expires = now + (duration_ms(cancel["timeout"]) if cancel.get("timeout") else FOREVER_MS)
        expr = cancel.get("if")
        await tx.add_wait(
            WaitRecord(
                run.run_id, f"{CANCEL_STEP}{i}", cancel["event"], expr, run.events[0], expires
            ),
            expressions.index_term(expr, run.events[0]),
        )


async def expired(tx: Tx, item: QueueItem) -> tuple[RunRecord, str] | None:
    """A timeout timer fired: the run to cancel and why, if it is past its timeout (a finish
    timeout of a run not started yet, or started late, is queued again for later)."""
    if not await tx.delete_item(item.id):
        return None
    run = await tx.lock_run(item.run_id)
    if run is None or run.status.finished:
        return None
    payload, now = item.payload or {}, now_ms()
    ms = int(payload.get("ms", 0))
    if payload.get("which") == "start":
        if run.started_at is None:
            return run, f"timed out: not started within {compact(ms)} (timeouts.start)"
        return None
    deadline = now + ms if run.started_at is None else run.started_at + ms
    if deadline > now:
        await tx.enqueue(run.run_id, ItemKind.TIMEOUT, available_at=deadline, payload=payload)
        return None
    return run, f"timed out: not finished within {compact(ms)} of starting (timeouts.finish)"


def cancels(wait: WaitRecord, event: dict[str, Any]) -> bool:
    """Whether a cancel listener is still listening to `event` (it never hears the event that
    created its run, and stops at its timeout)."""
    return wait.expires_at >= now_ms() and wait.trigger_event.get("id") != event.get("id")
