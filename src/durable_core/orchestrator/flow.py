"""Flow control: what the orchestrator decides when an event arrives and when work is claimed.

When an event arrives (`admit`): idempotency keys, rate limits and singletons may skip it
(recorded as a `skipped` run with its reason); debounce and batching hold a queued run open
and start it later (a FLUSH timer). When work is claimed (`claim`): concurrency limits park
requests until a slot frees, throttles delay run starts, and priority orders the line. Timeouts
are TIMEOUT timers; `cancel` listeners are waits that cancel their run when matched.

Every state lives in the store (`flow_state`, queue columns), changed in the same transaction
as the runs it concerns, so several orchestrators sharing PostgreSQL enforce one limit.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections import Counter
from typing import TYPE_CHECKING, Any

from .._durations import format_duration, parse_duration, to_iso_utc
from . import expressions
from .ids import new_id
from .store import FunctionRecord, ItemKind, QueueItem, RunRecord, RunStatus, Tx, WaitRecord, now_ms

if TYPE_CHECKING:
    from .core import Machine

DAY_MS = 24 * 3600 * 1000
PRIORITY_MAX_MS = 600_000
FOREVER_MS = 100 * 365 * DAY_MS  # a cancel listener without a timeout
CANCEL_STEP = "cancel:"  # the step name of a cancel listener (step ids are hashes, never this)


def duration_ms(text: Any) -> int:
    return round(parse_duration(str(text)).total_seconds() * 1000)


def compact(ms: float) -> str:
    return format_duration(_dt.timedelta(milliseconds=ms))


def iso(ms: float) -> str:
    return to_iso_utc(_dt.datetime.fromtimestamp(ms / 1000, _dt.UTC))


def key_value(source: str | None, event: dict[str, Any]) -> str | None:
    """The key an expression gives for `event` (None without an expression; "null" when the
    expression cannot be evaluated, so such events share one key)."""
    if not source:
        return None
    value = expressions.evaluate(source, {"event": event})
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _keyed(base: str, value: str | None) -> str:
    """A state or limit key: `base`, made per key value when the option has a key."""
    return base if value is None else f"{base}|{value}"


def _on_key(value: str | None) -> str:
    return "" if value is None else f' on key "{value}"'


# -- checking options at registration -------------------------------------------------------


def check(config: dict[str, Any]) -> str | None:
    """What is wrong with a function's flow-control options (None if nothing), so a bad
    registration is refused with a 400 instead of failing later in the queue."""
    try:
        _check(config)
    except _Bad as bad:
        return str(bad)
    return None


class _Bad(Exception):
    pass


def _obj(config: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = config.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Bad(f"{name} must be an object")
    return value


def _int(opts: dict[str, Any], where: str, field: str, low: int, required: bool = True) -> None:
    value = opts.get(field)
    if value is None and not required:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise _Bad(f"{where}.{field} must be an integer >= {low}")


def _dur(opts: dict[str, Any], where: str, field: str, required: bool = True) -> None:
    value = opts.get(field)
    if value is None and not required:
        return
    try:
        if not isinstance(value, str) or duration_ms(value) <= 0:
            raise ValueError("must be a positive duration")
    except ValueError:
        raise _Bad(
            f'{where}.{field} must be a positive duration like "30s" (got {value!r})'
        ) from None


def _cel(opts: dict[str, Any] | str, where: str, field: str | None = None) -> None:
    value = opts if field is None else opts.get(field)  # type: ignore[union-attr]
    if value is None:
        return
    name = where if field is None else f"{where}.{field}"
    if not isinstance(value, str):
        raise _Bad(f"{name} must be a CEL expression string")
    try:
        expressions.check(value)
    except Exception as err:
        raise _Bad(f"{name}: {err}") from None


def _check(config: dict[str, Any]) -> None:
    concurrency = config.get("concurrency")
    if concurrency is not None:
        if not isinstance(concurrency, list) or len(concurrency) > 2:
            raise _Bad("concurrency must be a list of at most 2 limits")
        for i, conc in enumerate(concurrency):
            where = f"concurrency[{i}]"
            if not isinstance(conc, dict):
                raise _Bad(f"{where} must be an object")
            _int(conc, where, "limit", 0)
            _cel(conc, where, "key")
            if conc.get("scope") not in (None, "fn", "app", "env", "account"):
                raise _Bad(f'{where}.scope must be "fn", "app", "env" or "account"')
    for name, fields in (("throttle", True), ("rateLimit", False)):
        opts = _obj(config, name)
        if opts is not None:
            _int(opts, name, "limit", 1)
            _dur(opts, name, "period")
            _cel(opts, name, "key")
            if fields:
                _int(opts, name, "burst", 0, required=False)
    debounce = _obj(config, "debounce")
    if debounce is not None:
        _dur(debounce, "debounce", "period")
        _dur(debounce, "debounce", "timeout", required=False)
        _cel(debounce, "debounce", "key")
    batch = _obj(config, "batchEvents")
    if batch is not None:
        _int(batch, "batchEvents", "maxSize", 1)
        _dur(batch, "batchEvents", "timeout")
        _cel(batch, "batchEvents", "key")
        _cel(batch, "batchEvents", "if")  # events it does not hold start runs of their own
    if config.get("idempotency") is not None:
        _cel(config["idempotency"], "idempotency")
    priority = _obj(config, "priority")
    if priority is not None:
        if not isinstance(priority.get("run"), str):
            raise _Bad("priority.run must be a CEL expression string")
        _cel(priority, "priority", "run")
    singleton = _obj(config, "singleton")
    if singleton is not None:
        if singleton.get("mode") not in ("skip", "cancel"):
            raise _Bad('singleton.mode must be "skip" or "cancel"')
        _cel(singleton, "singleton", "key")
    timeouts = _obj(config, "timeouts")
    if timeouts is not None:
        _dur(timeouts, "timeouts", "start", required=False)
        _dur(timeouts, "timeouts", "finish", required=False)
    cancel = config.get("cancel")
    if cancel is not None:
        if not isinstance(cancel, list):
            raise _Bad("cancel must be a list")
        for i, c in enumerate(cancel):
            where = f"cancel[{i}]"
            if not isinstance(c, dict) or not isinstance(c.get("event"), str) or not c["event"]:
                raise _Bad(f"{where}.event must be an event name")
            _cel(c, where, "if")
            _dur(c, where, "timeout", required=False)


def has_queue_flow(fn: FunctionRecord) -> bool:
    """Whether the function's requests go through the flow-controlled claim."""
    cfg = fn.config
    return bool(
        any((c or {}).get("limit") for c in cfg.get("concurrency") or [])
        or cfg.get("throttle")
        or cfg.get("priority")
    )


# -- requests: the flow a queue item carries ------------------------------------------------


def request_flow(
    fn: FunctionRecord | None, events: list[dict[str, Any]], first: bool
) -> dict[str, Any] | None:
    """The flow control of a discovery or step request of a run (`first`: the run's start,
    which a throttle applies to)."""
    if fn is None or not has_queue_flow(fn):
        return None
    cfg, event = fn.config, events[0]
    flow: dict[str, Any] = {}
    limits = []
    for conc in cfg.get("concurrency") or []:
        limit = int(conc.get("limit") or 0)
        if limit <= 0:
            continue
        scope = conc.get("scope") or "fn"
        value = key_value(conc.get("key"), event)
        base = {"fn": f"fn:{fn.fn_id}", "app": f"app:{fn.app_id}"}.get(scope, "env")
        if value is not None:
            label = f'concurrency limit {limit} on key "{value}"'
        elif scope == "fn":
            label = f'concurrency limit {limit} on function "{fn.fn_id}"'
        elif scope == "app":
            label = f'concurrency limit {limit} on app "{fn.app_id}"'
        else:
            label = f"concurrency limit {limit} across all functions"
        limits.append([_keyed(base, value), limit, label])
    if limits:
        flow["c"] = limits
    priority = (cfg.get("priority") or {}).get("run")
    if priority:
        value = expressions.evaluate(str(priority), {"event": event})
        if isinstance(value, int | float) and not isinstance(value, bool):
            ms = max(-PRIORITY_MAX_MS, min(PRIORITY_MAX_MS, int(value * 1000)))
            if ms:
                flow["p"] = ms
    throttle = cfg.get("throttle")
    if throttle and first:
        limit, period = int(throttle["limit"]), duration_ms(throttle["period"])
        value = key_value(throttle.get("key"), event)
        key = _keyed(fn.fn_id, value)
        label = f"{limit} per {compact(period)}{_on_key(value)}"
        flow["t"] = [key, limit, period, int(throttle.get("burst") or 0), label]
    return flow or None


async def claim(tx: Tx, limit: int, lease_ms: int) -> list[QueueItem]:
    """Lease up to `limit` flow-controlled items that their limits allow, in line order;
    park those a concurrency limit holds and delay those a throttle holds."""
    await tx.lock_flow()
    now = now_ms()  # read under the lock, so starts are stamped in the order they were allowed
    busy: Counter[str] = Counter()
    for flow in await tx.flow_leased(now):
        for key, _limit, _label in flow.get("c", []):
            busy[key] += 1
    for key, flow in await tx.parked_keys():
        cap = next((c[1] for c in flow.get("c", []) if c[0] == key), 0)
        if cap > busy[key]:
            await tx.unpark(key, cap - busy[key])
    taken: list[QueueItem] = []
    tats: dict[str, float] = {}
    held: Counter[str] = Counter()  # items this claim delayed, per throttle key
    for item in await tx.flow_items(now, max(4 * limit, 64)):
        if len(taken) >= limit:
            break
        flow = item.flow or {}
        full = next((c for c in flow.get("c", []) if busy[c[0]] >= c[1]), None)
        if full is not None:
            flow["w"] = 1
            await tx.park(item, full[0])
            await tx.update_run(item.run_id, reason=full[2])
            continue
        if flow.get("t"):
            key, rate, period, burst, label = flow["t"]
            state = "throttle:" + key
            if state not in tats:
                stored = await tx.get_state(state)
                tats[state] = float(stored) if stored is not None else now
            interval = period / rate
            allowed = tats[state] - (rate + burst - 1) * interval  # GCRA: the earliest start
            if now < allowed:
                at = math.ceil(allowed + held[state] * interval)
                held[state] += 1
                flow["w"] = 1
                await tx.delay_item(item, at)
                await tx.update_run(item.run_id, reason=f"throttled until {iso(at)} ({label})")
                continue
            tats[state] = max(tats[state], now) + interval
        for c in flow.get("c", []):
            busy[c[0]] += 1
        taken.append(item)
    if taken:
        await tx.lease_items(taken, now, now + lease_ms)
        for item in taken:
            if (item.flow or {}).get("w"):
                await tx.update_run(item.run_id, reason=None)
    for state, tat in tats.items():
        await tx.set_state(state, tat)
    return taken


# -- events: admission ----------------------------------------------------------------------


async def admit(machine: Machine, tx: Tx, fn: FunctionRecord, event: dict[str, Any]) -> str:
    """Start (or hold, or skip) the run of `fn` for `event`; the run's id."""
    cfg, now = fn.config, now_ms()
    if cfg.get("idempotency"):
        idem = key_value(str(cfg["idempotency"]), event) or "null"
        if not await tx.claim_key(f"idempotency:{fn.fn_id}", idem, now + DAY_MS):
            return await skip(
                tx, fn, event, f'idempotency key "{idem}" was already used in the last 24h'
            )
    limit_opts = cfg.get("rateLimit")
    if limit_opts:
        limit, period = int(limit_opts["limit"]), duration_ms(limit_opts["period"])
        value = key_value(limit_opts.get("key"), event)
        state = _keyed(f"rate:{fn.fn_id}", value)
        stored = await tx.get_state(state)
        tat = float(stored) if stored is not None else now
        interval = period / limit
        if now < tat - (limit - 1) * interval:
            reason = f"rate limited: {limit} per {compact(period)}{_on_key(value)}"
            return await skip(tx, fn, event, reason)
        await tx.set_state(state, max(tat, now) + interval)
    run_id = new_id()
    singleton = cfg.get("singleton")
    if singleton:
        value = key_value(singleton.get("key"), event)
        state = _keyed(f"singleton:{fn.fn_id}", value)
        holder = await tx.get_state(state)
        current = await tx.lock_run(str(holder)) if holder else None
        if current is not None and not current.status.finished:
            if singleton.get("mode") == "cancel":
                reason = f"singleton: replaced by run {run_id}"
                await machine.finish(tx, current, RunStatus.CANCELLED, reason=reason)
            else:
                held_for = "" if value is None else f' for key "{value}"'
                reason = f"singleton: run {current.run_id} is still running{held_for}"
                return await skip(tx, fn, event, reason)
        await tx.set_state(state, run_id)
    if cfg.get("debounce"):
        return await _debounce(tx, fn, event, cfg["debounce"], run_id)
    batch = cfg.get("batchEvents")
    if batch and expressions.matches(batch.get("if"), {"event": event}):
        return await _batch(machine, tx, fn, event, batch, run_id)
    return await machine.start_run(tx, fn, [event], run_id=run_id)


async def skip(tx: Tx, fn: FunctionRecord, event: dict[str, Any], reason: str) -> str:
    now = now_ms()
    run = RunRecord(
        new_id(), fn.fn_id, fn.app_id, RunStatus.SKIPPED, [event], now, None, now, reason=reason
    )
    await tx.insert_run(run)
    return run.run_id


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
) -> str:
    now, period = now_ms(), duration_ms(opts["period"])
    timeout = duration_ms(opts["timeout"]) if opts.get("timeout") else None
    value = key_value(opts.get("key"), event)
    state = _keyed(f"debounce:{fn.fn_id}", value)
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
        return str(held["run"])
    due = now + (period if timeout is None else min(period, timeout))
    await _hold(tx, fn, event, run_id, f"debounced until {iso(due)}")
    await tx.set_state(state, {"run": run_id, "first": now, "due": due})
    await _flush_at(tx, run_id, state, due)
    return run_id


def _batching(count: int, size: int, due: int) -> str:
    return f"batching {count} of {size} events until {iso(due)}"


async def _batch(
    machine: Machine,
    tx: Tx,
    fn: FunctionRecord,
    event: dict[str, Any],
    opts: dict[str, Any],
    run_id: str,
) -> str:
    size, timeout = int(opts["maxSize"]), duration_ms(opts["timeout"])
    value = key_value(opts.get("key"), event)
    state = _keyed(f"batch:{fn.fn_id}", value)
    held = await tx.get_state(state)
    if held is None:
        due = now_ms() + timeout
        await _hold(tx, fn, event, run_id, _batching(1, size, due))
        if size <= 1:
            run = await tx.lock_run(run_id)
            assert run is not None
            await machine.begin(tx, fn, run)
            return run_id
        await tx.set_state(state, {"run": run_id, "due": due})
        await _flush_at(tx, run_id, state, due)
        return run_id
    run = await tx.lock_run(str(held["run"]))
    if run is None or run.status.finished:  # the held run was cancelled: start a new batch
        await tx.set_state(state, None)
        return await _batch(machine, tx, fn, event, opts, run_id)
    run.events = [*run.events, event]
    if len(run.events) >= size:
        await tx.set_state(state, None)
        await tx.update_run(run.run_id, events=run.events)
        await machine.begin(tx, fn, run)
    else:
        await tx.update_run(
            run.run_id, events=run.events, reason=_batching(len(run.events), size, held["due"])
        )
    return run.run_id


async def flush(machine: Machine, tx: Tx, item: QueueItem) -> None:
    """A debounce or batch timer fired: start its run unless it started or was put off."""
    if not await tx.delete_item(item.id):
        return
    state = str((item.payload or {}).get("state"))
    held = await tx.get_state(state)
    if held is None or held.get("run") != item.run_id or int(held["due"]) > now_ms():
        return  # started already, or a newer event moved it later (a later timer is queued)
    await tx.set_state(state, None)
    run = await tx.lock_run(item.run_id)
    fn = machine.functions.get(run.fn_id) if run is not None else None
    if run is None or run.status.finished:
        return
    if fn is None:
        await machine.fail_unregistered(tx, run)
        return
    await machine.begin(tx, fn, run)


# -- timeouts and cancel listeners ------------------------------------------------------------


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


async def timeout(machine: Machine, tx: Tx, item: QueueItem) -> None:
    """A timeout timer fired: cancel the run if it is past it (or look again later)."""
    if not await tx.delete_item(item.id):
        return
    run = await tx.lock_run(item.run_id)
    if run is None or run.status.finished:
        return
    payload, now = item.payload or {}, now_ms()
    ms = int(payload.get("ms", 0))
    if payload.get("which") == "start":
        if run.started_at is None:
            reason = f"timed out: not started within {compact(ms)} (timeouts.start)"
            await machine.finish(tx, run, RunStatus.CANCELLED, reason=reason)
        return
    deadline = now + ms if run.started_at is None else run.started_at + ms
    if deadline > now:
        await tx.enqueue(run.run_id, ItemKind.TIMEOUT, available_at=deadline, payload=payload)
        return
    reason = f"timed out: not finished within {compact(ms)} of starting (timeouts.finish)"
    await machine.finish(tx, run, RunStatus.CANCELLED, reason=reason)


def cancels(wait: WaitRecord, event: dict[str, Any]) -> bool:
    """Whether a cancel listener is still listening to `event` (it never hears the event that
    created its run, and stops at its timeout)."""
    return wait.expires_at >= now_ms() and wait.trigger_event.get("id") != event.get("id")
