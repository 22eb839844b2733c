"""Admission: what happens to an event for one function, decided before any run starts.

Idempotency keys, rate limits and singletons may skip the event (recorded as a `skipped` run
with its reason); debounce and batching hold a queued run open and start it later from a FLUSH
timer. Admission changes only flow-control state and held runs; it *returns* what the caller
must do next (start a run, begin a held one, cancel a singleton's holder), so it never reaches
into the run lifecycle itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from . import expressions
from .flow_options import DAY_MS, compact, duration_ms, iso, key_value, keyed, on_key
from .ids import new_id
from .store import FunctionRecord, ItemKind, QueueItem, RunRecord, RunStatus, Tx, now_ms


@dataclasses.dataclass(frozen=True)
class Decision:
    """`start`: start run `run_id` now. `begin`: start the held `run` with its final events.
    `done`: nothing more to do (skipped, or held for later). `replace`: a singleton's running
    holder to cancel, with the reason, before anything else."""

    action: str
    run_id: str
    run: RunRecord | None = None
    replace: tuple[RunRecord, str] | None = None


async def admit(tx: Tx, fn: FunctionRecord, event: dict[str, Any]) -> Decision:
    """Skip, hold or start the run of `fn` for `event`."""
    cfg, now = fn.config, now_ms()
    if cfg.get("idempotency"):
        idem = key_value(str(cfg["idempotency"]), event) or "null"
        if not await tx.claim_key(f"idempotency:{fn.fn_id}", idem, now + DAY_MS):
            reason = f'idempotency key "{idem}" was already used in the last 24h'
            return await skip(tx, fn, event, reason)
    limit_opts = cfg.get("rateLimit")
    if limit_opts and (limited := await _rate_limited(tx, fn, event, limit_opts)):
        return await skip(tx, fn, event, limited)
    run_id = new_id()
    replace = None
    singleton = cfg.get("singleton")
    if singleton:
        value = key_value(singleton.get("key"), event)
        state = keyed(f"singleton:{fn.fn_id}", value)
        holder = await tx.get_state(state)
        current = await tx.lock_run(str(holder)) if holder else None
        if current is not None and not current.status.finished:
            if singleton.get("mode") != "cancel":
                held_for = "" if value is None else f' for key "{value}"'
                reason = f"singleton: run {current.run_id} is still running{held_for}"
                return await skip(tx, fn, event, reason)
            replace = (current, f"singleton: replaced by run {run_id}")
        await tx.set_state(state, run_id)
    decision = await _hold_or_start(tx, fn, event, run_id)
    return dataclasses.replace(decision, replace=replace)


async def _rate_limited(
    tx: Tx, fn: FunctionRecord, event: dict[str, Any], opts: dict[str, Any]
) -> str | None:
    """The reason the event is over the rate limit (GCRA), or None after taking its slot."""
    now = now_ms()
    limit, period = int(opts["limit"]), duration_ms(opts["period"])
    value = key_value(opts.get("key"), event)
    state = keyed(f"rate:{fn.fn_id}", value)
    stored = await tx.get_state(state)
    tat = float(stored) if stored is not None else now
    interval = period / limit
    if now < tat - (limit - 1) * interval:
        return f"rate limited: {limit} per {compact(period)}{on_key(value)}"
    await tx.set_state(state, max(tat, now) + interval)
    return None


async def _hold_or_start(
    tx: Tx, fn: FunctionRecord, event: dict[str, Any], run_id: str
) -> Decision:
    cfg = fn.config
    if cfg.get("debounce"):
        return await _debounce(tx, fn, event, cfg["debounce"], run_id)
    batch = cfg.get("batchEvents")
    if batch and expressions.matches(batch.get("if"), {"event": event}):
        return await _batch(tx, fn, event, batch, run_id)
    return Decision("start", run_id)


async def skip(tx: Tx, fn: FunctionRecord, event: dict[str, Any], reason: str) -> Decision:
    now = now_ms()
    run = RunRecord(
        new_id(), fn.fn_id, fn.app_id, RunStatus.SKIPPED, [event], now, None, now, reason=reason
    )
    await tx.insert_run(run)
    return Decision("done", run.run_id)


async def _hold(
    tx: Tx, fn: FunctionRecord, event: dict[str, Any], run_id: str, reason: str
) -> None:
    """A run that exists (so the API shows it, queued, with its reason) but starts later."""
    run = RunRecord(run_id, fn.fn_id, fn.app_id, RunStatus.QUEUED, [event], now_ms(), reason=reason)
    await tx.insert_run(run)


async def _flush_at(tx: Tx, run_id: str, state: str, at: int) -> None:
    await tx.enqueue(run_id, ItemKind.FLUSH, available_at=at, payload={"state": state})


async def _debounce(
    tx: Tx, fn: FunctionRecord, event: dict[str, Any], opts: dict[str, Any], run_id: str
) -> Decision:
    now, period = now_ms(), duration_ms(opts["period"])
    timeout = duration_ms(opts["timeout"]) if opts.get("timeout") else None
    value = key_value(opts.get("key"), event)
    state = keyed(f"debounce:{fn.fn_id}", value)
    held = await tx.get_state(state)
    current = await tx.lock_run(str(held["run"])) if held is not None else None
    if held is not None and (current is None or current.status.finished):
        held = None  # the held run was cancelled: hold a new one
    if held is not None:  # a run is held open: it now starts later, with this event
        due = now + period
        if timeout is not None:
            due = min(due, int(held["first"]) + timeout)
        held["due"] = due
        await tx.set_state(state, held)
        await tx.update_run(held["run"], events=[event], reason=f"debounced until {iso(due)}")
        await _flush_at(tx, held["run"], state, due)
        return Decision("done", str(held["run"]))
    due = now + (period if timeout is None else min(period, timeout))
    await _hold(tx, fn, event, run_id, f"debounced until {iso(due)}")
    await tx.set_state(state, {"run": run_id, "first": now, "due": due})
    await _flush_at(tx, run_id, state, due)
    return Decision("done", run_id)


def _batching(count: int, size: int, due: int) -> str:
    return f"batching {count} of {size} events until {iso(due)}"


async def _batch(
    tx: Tx, fn: FunctionRecord, event: dict[str, Any], opts: dict[str, Any], run_id: str
) -> Decision:
    size, timeout = int(opts["maxSize"]), duration_ms(opts["timeout"])
    value = key_value(opts.get("key"), event)
    state = keyed(f"batch:{fn.fn_id}", value)
    held = await tx.get_state(state)
    if held is None:
        due = now_ms() + timeout
        await _hold(tx, fn, event, run_id, _batching(1, size, due))
        if size <= 1:
            run = await tx.lock_run(run_id)
            assert run is not None
            return Decision("begin", run_id, run)
        await tx.set_state(state, {"run": run_id, "due": due})
        await _flush_at(tx, run_id, state, due)
        return Decision("done", run_id)
    run = await tx.lock_run(str(held["run"]))
    if run is None or run.status.finished:  # the held run was cancelled: start a new batch
        await tx.set_state(state, None)
        return await _batch(tx, fn, event, opts, run_id)
    run.events = [*run.events, event]
    if len(run.events) >= size:
        await tx.set_state(state, None)
        await tx.update_run(run.run_id, events=run.events)
        return Decision("begin", run.run_id, run)
    await tx.update_run(
        run.run_id, events=run.events, reason=_batching(len(run.events), size, held["due"])
    )
    return Decision("done", run.run_id)


async def flush(tx: Tx, item: QueueItem) -> RunRecord | None:
    """A debounce or batch timer fired: the held run to start now, unless it started already
    or a newer event put it off (a later timer is queued then)."""
    if not await tx.delete_item(item.id):
        return None
    state = str((item.payload or {}).get("state"))
    held = await tx.get_state(state)
    if held is None or held.get("run") != item.run_id or int(held["due"]) > now_ms():
        return None
    await tx.set_state(state, None)
    run = await tx.lock_run(item.run_id)
    if run is None or run.status.finished:
        return None
    return run
