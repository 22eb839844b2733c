"""The run state machine: events start runs, responses advance them, timers resume them.

Every change below happens inside one store transaction, so a crash leaves either the state
before it or the state after it. A run has a set of *pending* ops (planned steps, sleeps,
waits, invokes, signals); when the last one resolves, exactly one discovery request is queued.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

from .._durations import parse_duration
from ..events import Event
from . import cron, expressions
from . import flow as flowctl
from .ids import new_id
from .store import (
    EventRecord,
    FunctionRecord,
    HistoryRecord,
    ItemKind,
    QueueItem,
    RunRecord,
    RunStatus,
    Tx,
    WaitRecord,
    now_ms,
)
from .transport import CallResult

_log = logging.getLogger("durable.orchestrator")

DEFAULT_BACKOFF = (15, 30, 60, 120, 300, 600, 1200, 2400, 3600, 7200)
FAST_BACKOFF = (0.05, 0.1, 0.2, 0.5, 1, 2)
FAILED, FINISHED, CANCELLED = (
    "inngest/function.failed",
    "inngest/function.finished",
    "inngest/function.cancelled",
)
INVOKED = "inngest/function.invoked"
DEDUPE_MS = 24 * 3600 * 1000
WAIT_DEFAULT_MS = 7 * 24 * 3600 * 1000  # a wait without a timeout


def _ms(duration: str | None, default_ms: int) -> int:
    if not duration:
        return default_ms
    return int(parse_duration(duration).total_seconds() * 1000)


def _parse_time(text: str) -> int | None:
    try:
        moment = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.UTC)
    return int(moment.timestamp() * 1000)


def event_wire(rec: EventRecord) -> dict[str, Any]:
    wire = dict(rec.raw)
    wire.update({"name": rec.name, "data": rec.data, "id": rec.event_id, "ts": rec.ts})
    return wire


class Machine:
    """Pure decisions over a transaction; the orchestrator supplies functions and clocks."""

    def __init__(self, functions: dict[str, FunctionRecord], backoff: Sequence[float]) -> None:
        self.functions = functions
        self.backoff = tuple(backoff)
        # When set: a lease deadline if this process runs a new run itself at once, else None.
        self.take: Callable[[], int | None] | None = None
        self.by_event: dict[str, list[tuple[FunctionRecord, str | None]]] = {}
        #: Whether flow-controlled queue items may exist (then claims look for them too).
        self.has_flow = False
        self.reindex()

    def reindex(self) -> None:
        index: dict[str, list[tuple[FunctionRecord, str | None]]] = {}
        for fn in self.functions.values():
            for trig in fn.config.get("triggers") or []:
                if "event" in trig:
                    index.setdefault(trig["event"], []).append((fn, trig.get("expression")))
        self.by_event = index
        self.has_flow = self.has_flow or any(
            flowctl.has_queue_flow(fn) for fn in self.functions.values()
        )

    def _flow(self, run: RunRecord) -> dict[str, Any] | None:
        return flowctl.request_flow(self.functions.get(run.fn_id), run.events, first=False)

    def delay_ms(self, attempt: int) -> int:
        base = self.backoff[min(attempt, len(self.backoff) - 1)] if self.backoff else 0
        return int(base * 1000 * (1 + random.random() * 0.1))

    # -- events -----------------------------------------------------------------------------

    async def ingest(self, tx: Tx, events: list[Event]) -> list[str]:
        ids = []
        for event in events:
            now = now_ms()
            internal = new_id()
            raw = event.model_dump(mode="json", exclude_none=True)
            rec = EventRecord(
                internal, event.name, event.data, event.id or internal, event.ts or now, now, raw
            )
            await tx.insert_event(rec)
            ids.append(internal)
            wire = event_wire(rec)
            started: set[str] = set()  # one run per function, however many triggers match
            for fn, expr in self.by_event.get(event.name, []):
                if fn.fn_id in started or not expressions.matches(expr, {"event": wire}):
                    continue
                started.add(fn.fn_id)
                if event.id and not await tx.claim_key(
                    f"event:{fn.fn_id}", event.id, now + DEDUPE_MS
                ):
                    continue
                await flowctl.admit(self, tx, fn, wire)
            waits = sorted(await tx.candidate_waits(wire), key=lambda w: (w.run_id, w.step))
            for wait in waits:  # in one order everywhere, so two intakes cannot deadlock
                variables = {"event": wait.trigger_event, "async": wire}
                if wait.step.startswith(flowctl.CANCEL_STEP):
                    if not flowctl.cancels(wait, wire):
                        continue
                    if expressions.matches(wait.expression, variables) and await tx.remove_wait(
                        wait.run_id, wait.step
                    ):
                        await self._cancel_by_event(tx, wait.run_id, wire)
                elif expressions.matches(wait.expression, variables) and await tx.remove_wait(
                    wait.run_id, wait.step
                ):
                    await self.resolve(tx, wait.run_id, wait.step, wire)
        return ids

    def cron_triggers(self) -> list[tuple[FunctionRecord, str]]:
        return [
            (fn, str(trig["cron"]))
            for fn in self.functions.values()
            for trig in fn.config.get("triggers") or []
            if "cron" in trig
        ]

    async def fire_cron(self, tx: Tx, fn: FunctionRecord, spec: str, tick: int) -> bool:
        """Start the run of `tick` unless a process did already (or a later tick ran)."""
        if not await tx.advance_key("cron", f"{fn.fn_id}|{spec}", tick):
            return False
        event = {"name": cron.TIMER_EVENT, "data": {"cron": spec}, "id": new_id(), "ts": tick}
        await flowctl.admit(self, tx, fn, event)
        return True

    async def _cancel_by_event(self, tx: Tx, run_id: str, event: dict[str, Any]) -> None:
        run = await tx.lock_run(run_id)
        if run is not None and not run.status.finished:
            reason = f"cancelled by event {event['name']!r} (id {event.get('id')})".replace(
                "'", '"'
            )
            await self.finish(tx, run, RunStatus.CANCELLED, reason=reason)

    async def start_run(
        self,
        tx: Tx,
        fn: FunctionRecord,
        events: list[dict[str, Any]],
        parent: tuple[str, str] | None = None,
        run_id: str | None = None,
    ) -> str:
        now = now_ms()
        flow = flowctl.request_flow(fn, events, first=True)
        lease = self.take() if self.take is not None and flow is None else None
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
        await tx.insert_run(run)
        await self._start(tx, fn, run, flow, lease)
        return run.run_id

    async def begin(self, tx: Tx, fn: FunctionRecord, run: RunRecord) -> None:
        """Start a run held until now (debounced or batched) with its final events."""
        await tx.update_run(run.run_id, events=run.events, reason=None)
        await self._start(tx, fn, run, flowctl.request_flow(fn, run.events, first=True), None)

    async def _start(
        self,
        tx: Tx,
        fn: FunctionRecord,
        run: RunRecord,
        flow: dict[str, Any] | None,
        lease: int | None,
    ) -> None:
        now = now_ms()
        item_id = await tx.enqueue(
            run.run_id, ItemKind.DISCOVERY, available_at=now, lease_until=lease, flow=flow
        )
        if lease:
            tx.taken.append((QueueItem(item_id, run.run_id, ItemKind.DISCOVERY, None, 0, now), run))
        if fn.config.get("timeouts") or fn.config.get("cancel"):
            await flowctl.arm(tx, fn, run)

    async def resolve(self, tx: Tx, run_id: str, step: str, memo: Any) -> bool:
        """Store a memo (first write wins); queue one discovery when nothing else is pending."""
        run = await tx.lock_run(run_id)
        if run is None or run.status.finished or not await tx.put_memo(run_id, step, memo):
            return False
        await tx.end_history(run_id, step, now_ms(), memo)
        if await tx.remove_pending(run_id, step) == 0:
            payload = {"disable_immediate_execution": True} if run.batch_parallel else None
            await tx.enqueue(run_id, ItemKind.DISCOVERY, payload=payload, flow=self._flow(run))
            await tx.update_run(run_id, status=RunStatus.RUNNING, reason=None, batch_parallel=False)
        return True

    # -- requests ---------------------------------------------------------------------------

    def request_body(
        self, run: RunRecord, item: QueueItem, memos: dict[str, Any]
    ) -> dict[str, Any]:
        fn = self.functions.get(run.fn_id)
        retries = fn.retries if fn else 4
        die = bool(item.payload and item.payload.get("disable_immediate_execution"))
        return {
            "event": run.events[0],
            "events": run.events,
            "steps": memos,
            "ctx": {
                "run_id": run.run_id,
                "fn_id": run.fn_id,
                "attempt": item.attempt,
                "max_attempts": retries + 1,
                "disable_immediate_execution": die,
                "stack": {"stack": list(memos), "current": len(memos)},
            },
            "use_api": False,
            "version": 2,
        }

    async def apply(
        self, tx: Tx, item: QueueItem, run: RunRecord, res: CallResult, started: int
    ) -> None:
        """Advance `run` with the app's answer to `item` (the item is consumed)."""
        if not await tx.delete_item(item.id):
            return  # its lease ran out and another worker answered it already
        if res.status == 200:
            await self.finish(tx, run, RunStatus.COMPLETED, output=res.body)
        elif (
            res.status == 206
            and isinstance(res.body, list)
            and all(isinstance(o, dict) and "op" in o for o in res.body)
        ):
            await self._apply_ops(tx, item, run, res.body, started)
        else:
            await self._function_error(tx, item, run, res, started)

    async def _function_error(
        self, tx: Tx, item: QueueItem, run: RunRecord, res: CallResult, started: int
    ) -> None:
        body = res.body if isinstance(res.body, dict) else {"message": str(res.body)}
        error = {
            "name": str(body.get("name") or "Error"),
            "message": str(body.get("message") or f"HTTP {res.status}"),
            "stack": body.get("stack"),
        }
        if res.status == 206:
            error = {
                "name": "InvalidResponse",
                "message": f"206 without opcodes: {str(res.body)[:500]}",
                "stack": None,
            }
        # A failed attempt of the whole request is part of the run's story too.
        step = item.step or "function"
        await tx.add_history(
            HistoryRecord(
                run.run_id,
                step,
                "(function)" if item.step is None else step,
                "FunctionError",
                item.attempt,
                started,
                now_ms(),
                None,
                error,
            )
        )
        fn = self.functions.get(run.fn_id)
        max_attempts = (fn.retries if fn else 0) + 1
        no_retry = res.headers.get("x-inngest-no-retry") == "true" or (
            res.status == 404 and fn is None
        )
        if no_retry or item.attempt + 1 >= max_attempts:
            await self.finish(tx, run, RunStatus.FAILED, error=error)
            return
        when = now_ms() + self.delay_ms(item.attempt)
        retry_after = res.headers.get("retry-after")
        if retry_after:
            at = _parse_time(retry_after)
            if at is None and retry_after.strip().isdigit():
                at = now_ms() + int(retry_after) * 1000
            when = max(at or when, now_ms())
        await tx.enqueue(
            run.run_id,
            item.kind,
            step=item.step,
            attempt=item.attempt + 1,
            available_at=when,
            payload=item.payload,
            flow=self._flow(run),
        )
        await tx.update_run(
            run.run_id,
            reason=f"retrying at attempt {item.attempt + 1}: {str(error['message'])[:200]}",
        )

    async def _apply_ops(
        self, tx: Tx, item: QueueItem, run: RunRecord, ops: list[dict[str, Any]], started: int
    ) -> None:
        now = now_ms()
        flow = self._flow(run)
        waiting: list[str] = []
        reasons: list[str] = []
        # Ops answered at once (an invoke of an unknown function, a signal already waited
        # for): resolved after the whole batch is pending, so fan-in counts every op.
        immediate: list[tuple[str, dict[str, Any]]] = []
        for op in ops:
            kind, step = op.get("op"), str(op.get("id"))
            name = str(op.get("displayName") or op.get("name") or step)
            opts = op.get("opts") or {}
            if kind in ("StepRun", "StepFailed", "StepError"):  # the step ran in this request
                await tx.add_history(
                    HistoryRecord(
                        run.run_id, step, name, kind, item.attempt, started, now,
                        op.get("data") if kind == "StepRun" else None, op.get("error"),
                    )
                )  # fmt: skip
            if kind in ("StepRun", "StepFailed"):
                memo = {"data": op.get("data")} if kind == "StepRun" else {"error": op.get("error")}
                if item.kind is ItemKind.STEP:
                    await self.resolve(tx, run.run_id, step, memo)
                else:
                    await tx.put_memo(run.run_id, step, memo)
            elif kind == "StepError":
                await tx.enqueue(
                    run.run_id,
                    item.kind,
                    step=item.step,
                    attempt=item.attempt + 1,
                    available_at=now + self.delay_ms(item.attempt),
                    payload=item.payload,
                    flow=flow,
                )
                reasons.append(f"step {name!r} failed (attempt {item.attempt + 1}), retrying")
            elif kind == "StepPlanned":
                waiting.append(step)
                await tx.enqueue(run.run_id, ItemKind.STEP, step=step, flow=flow)
            elif kind == "Sleep":
                wake = _parse_time(str(op.get("name") or ""))
                if wake is None:
                    wake = now + _ms(opts.get("duration"), 0)
                waiting.append(step)
                await tx.add_history(HistoryRecord(run.run_id, step, name, kind, 0, now, None))
                await self._timer(tx, run.run_id, step, wake, {"memo": None})
                reasons.append(
                    f"sleeping until {_dt.datetime.fromtimestamp(wake / 1000, _dt.UTC).isoformat()}"
                )
            elif kind == "WaitForEvent":
                event_name = str(opts.get("event") or op.get("name"))
                expires = now + _ms(opts.get("timeout"), WAIT_DEFAULT_MS)
                expr = opts.get("if")
                trigger = run.events[0]
                await tx.add_wait(
                    WaitRecord(run.run_id, step, event_name, expr, trigger, expires),
                    expressions.index_term(expr, trigger),
                )
                waiting.append(step)
                await tx.add_history(HistoryRecord(run.run_id, step, name, kind, 0, now, None))
                await self._timer(tx, run.run_id, step, expires, {"memo": None, "only_if": "wait"})
                reasons.append(f"waiting for event {event_name!r}")
            elif kind == "WaitForSignal":
                signal = str(opts.get("signal") or "")
                await tx.add_history(HistoryRecord(run.run_id, step, name, kind, 0, now, None))
                if not await tx.add_signal(
                    signal, run.run_id, step, opts.get("conflict") != "fail"
                ):
                    err = {
                        "name": "SignalConflict",
                        "message": f"another run already waits for signal {signal!r}",
                        "stack": None,
                    }
                    immediate.append((step, {"error": err}))
                    continue
                waiting.append(step)
                expires = now + _ms(opts.get("timeout"), WAIT_DEFAULT_MS)
                await self._timer(
                    tx, run.run_id, step, expires, {"memo": None, "only_if": "signal"}
                )
                reasons.append(f"waiting for signal {signal!r}")
            elif kind == "InvokeFunction":
                await tx.add_history(HistoryRecord(run.run_id, step, name, kind, 0, now, None))
                refused = await self._invoke(tx, run, step, opts, reasons)
                if refused is None:
                    waiting.append(step)
                else:
                    immediate.append((step, refused))
            else:
                await tx.add_history(
                    HistoryRecord(
                        run.run_id,
                        step,
                        name,
                        str(kind),
                        item.attempt,
                        started,
                        now,
                        None,
                        {"message": f"unknown opcode {kind!r}"},
                    )
                )
                await self.finish(
                    tx,
                    run,
                    RunStatus.FAILED,
                    error={
                        "name": "UnsupportedOpcode",
                        "message": f"the SDK sent opcode {kind!r}, which this orchestrator does not support",
                        "stack": None,
                    },
                )
                return
        if waiting or immediate:
            await tx.add_pending(run.run_id, waiting + [step for step, _ in immediate])
            status = (
                RunStatus.SLEEPING
                if all(r.startswith("sleeping") for r in reasons) and reasons
                else RunStatus.WAITING
            )
            if any(o.get("op") == "StepPlanned" for o in ops):
                status = RunStatus.RUNNING
            await tx.update_run(
                run.run_id,
                status=status,
                reason="; ".join(reasons) or None,
                batch_parallel=len(waiting) + len(immediate) > 1,
            )
            for step, memo in immediate:
                await self.resolve(tx, run.run_id, step, memo)
        elif item.kind is ItemKind.DISCOVERY and not any(o.get("op") == "StepError" for o in ops):
            await tx.enqueue(run.run_id, ItemKind.DISCOVERY, flow=flow)
            await tx.update_run(run.run_id, status=RunStatus.RUNNING, reason=None)
        elif reasons:
            await tx.update_run(run.run_id, reason="; ".join(reasons))

    async def _invoke(
        self,
        tx: Tx,
        run: RunRecord,
        step: str,
        opts: dict[str, Any],
        reasons: list[str],
    ) -> dict[str, Any] | None:
        """Start the child run; or the step's error memo if there is nothing to invoke."""
        fn_id = str(opts.get("function_id") or "")
        fn = self.functions.get(fn_id)
        if fn is None:
            err = {
                "name": "FunctionNotFound",
                "message": f"cannot invoke {fn_id!r}: no such function is registered",
                "stack": None,
            }
            return {"error": err}
        payload = opts.get("payload") or {}
        event = {"name": INVOKED, "data": payload.get("data") or {}, "id": new_id(), "ts": now_ms()}
        child = await self.start_run(tx, fn, [event], parent=(run.run_id, step))
        if opts.get("timeout"):
            err = {
                "name": "InvokeTimeout",
                "message": f"invoked function {fn_id} did not finish within {opts['timeout']}",
                "stack": None,
            }
            at = now_ms() + _ms(opts["timeout"], 0)
            await self._timer(tx, run.run_id, step, at, {"memo": {"error": err}})
        reasons.append(f"waiting for invoked run {child} of {fn_id}")
        return None

    @staticmethod
    async def _timer(tx: Tx, run_id: str, step: str, at: int, payload: dict[str, Any]) -> None:
        """Resume `step` at `at` with `payload["memo"]` (unless `only_if` says it resolved)."""
        await tx.enqueue(run_id, ItemKind.RESUME, step=step, available_at=at, payload=payload)

    async def fire(self, tx: Tx, item: QueueItem) -> None:
        """A timer fired."""
        if item.kind is ItemKind.FLUSH:
            await flowctl.flush(self, tx, item)
        elif item.kind is ItemKind.TIMEOUT:
            await flowctl.timeout(self, tx, item)
        else:
            await self.resume(tx, item)

    async def resume(self, tx: Tx, item: QueueItem) -> None:
        """A timer fired: a sleep ended, or a wait, signal or invoke timed out."""
        if not await tx.delete_item(item.id):
            return
        payload = item.payload or {}
        assert item.step is not None
        only_if = payload.get("only_if")
        if only_if == "wait" and not await tx.remove_wait(item.run_id, item.step):
            return
        if only_if == "signal" and not await tx.remove_signal(item.run_id, item.step):
            return
        await self.resolve(tx, item.run_id, item.step, payload.get("memo"))

    # -- endings ----------------------------------------------------------------------------

    async def fail_unregistered(self, tx: Tx, run: RunRecord) -> None:
        """Fail a run whose function is no longer registered."""
        error = {
            "name": "FunctionNotFound",
            "message": f"function {run.fn_id} is no longer registered; sync its app and rerun",
            "stack": None,
        }
        await self.finish(tx, run, RunStatus.FAILED, error=error)

    async def finish(
        self,
        tx: Tx,
        run: RunRecord,
        status: RunStatus,
        *,
        output: Any = None,
        error: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> None:
        await tx.update_run(
            run.run_id, status=status, ended_at=now_ms(), output=output, error=error, reason=reason
        )
        await tx.clear_run(run.run_id)
        tx.finished.append(
            dataclasses.replace(
                run, status=status, ended_at=now_ms(), output=output, error=error, reason=reason
            )
        )
        event = run.events[0]
        if status is RunStatus.COMPLETED:
            system = Event(
                name=FINISHED,
                data={
                    "function_id": run.fn_id,
                    "run_id": run.run_id,
                    "output": output,
                    "event": event,
                },
            )
        elif status is RunStatus.FAILED:
            system = Event(
                name=FAILED,
                data={
                    "function_id": run.fn_id,
                    "run_id": run.run_id,
                    "error": error,
                    "event": event,
                },
            )
        else:
            system = Event(
                name=CANCELLED,
                data={
                    "function_id": run.fn_id,
                    "run_id": run.run_id,
                    "reason": reason,
                    "event": event,
                },
            )
        await self.ingest(tx, [system])
        if run.parent_run_id and run.parent_step:
            if status is RunStatus.COMPLETED:
                memo: dict[str, Any] = {"data": output}
            else:
                failure = error or {
                    "name": "RunCancelled",
                    "message": reason or "the invoked run was cancelled",
                }
                memo = {
                    "error": {
                        "name": failure.get("name", "Error"),
                        "message": failure.get("message", ""),
                        "stack": failure.get("stack"),
                    }
                }
            await self.resolve(tx, run.parent_run_id, run.parent_step, memo)
