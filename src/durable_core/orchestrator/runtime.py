"""The orchestrator at run time: a dispatcher claims due queue items and workers call apps.

New work wakes the dispatcher at once; otherwise it sleeps until the next item is due, so
timers fire on time without polling. Items are claimed under a lease that is renewed while a
call runs; on start, work left in flight by a crashed process is taken up again.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pydantic

from .._faults import fault
from .._steps import Checkpoints
from ..errors import ConfigError
from ..events import Event
from . import cron, flow
from .core import DEFAULT_BACKOFF, Machine
from .store import (
    AppRecord,
    FunctionRecord,
    HistoryRecord,
    ItemKind,
    QueueItem,
    RunRecord,
    RunStatus,
    Store,
    Tx,
    now_ms,
)
from .transport import CallResult, HttpTransport, InProcessTransport

T = TypeVar("T")

_log = logging.getLogger("durable.orchestrator")

Listener = Callable[[str, dict[str, Any]], None]


class RunCancelledError(Exception):
    """A checkpoint arrived for a run that was cancelled; the request stops."""


class Orchestrator:
    def __init__(
        self,
        store: Store,
        *,
        signing_key: str | None = None,
        event_keys: Sequence[str] | None = None,
        backoff: Sequence[float] = DEFAULT_BACKOFF,
        concurrency: int = 64,
        lease_ms: int = 30_000,
        poll_interval: float = 1.0,
        request_timeout: float = 300.0,
    ) -> None:
        self.store = store
        self.signing_key = signing_key
        self.event_keys = set(event_keys) if event_keys is not None else None
        self.concurrency = concurrency
        self.lease_ms = lease_ms
        self.poll_interval = poll_interval
        self.inproc = InProcessTransport()
        self.http = HttpTransport(signing_key=signing_key, timeout=request_timeout)
        self.machine = Machine({}, backoff)
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._dispatcher: asyncio.Task[None] | None = None
        self._cron: asyncio.Task[None] | None = None
        self._cron_changed = asyncio.Event()
        self._stopping = False
        self._listeners: list[Listener] = []
        self._run_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._reserved = 0  # slots promised to runs taken in transactions not yet committed
        self.machine.take = self._take

    @property
    def production(self) -> bool:
        return self.signing_key is not None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.open()
        try:
            async with self.store.transaction() as tx:
                functions = await tx.list_functions()
                released = await tx.release_leases()
                # Flow-controlled items left from before (their function may have changed since).
                leftover = bool(await tx.flow_items(2**62, 1) or await tx.parked_keys())
        except BaseException:
            await self.store.close()
            raise
        self.machine.functions = {f.fn_id: f for f in functions}
        self.machine.has_flow = leftover
        self.machine.reindex()
        if released:
            _log.info("resuming %d queue item(s) left in flight", released)
        self._stopping = False
        await self.store.subscribe(self._notified)
        self._dispatcher = asyncio.create_task(self._dispatch(), name="durable-dispatcher")
        self._cron = asyncio.create_task(self._schedule(), name="durable-cron")

    def _notified(self, what: str) -> None:
        """Another process queued work or changed functions (shared stores)."""
        if what == "functions":
            task = asyncio.create_task(self.reload_functions())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        self._wake.set()

    async def reload_functions(self) -> None:
        async with self.store.snapshot() as tx:
            functions = await tx.list_functions()
        self.machine.functions = {f.fn_id: f for f in functions}
        self.machine.reindex()
        self._cron_changed.set()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        for loop_task in (self._dispatcher, self._cron):
            if loop_task is not None:
                loop_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop_task
        for task in list(self._inflight):
            task.cancel()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        await self.http.aclose()
        await self.store.close()

    def wake(self) -> None:
        self._wake.set()

    def on_change(self, listener: Listener) -> None:
        """Call `listener(kind, details)` on step and run changes (for progress output)."""
        self._listeners.append(listener)

    def _emit(self, kind: str, details: dict[str, Any]) -> None:
        for listener in self._listeners:
            try:
                listener(kind, details)
            except Exception:
                _log.exception("a change listener failed")

    # -- registration -----------------------------------------------------------------------

    async def register(self, body: dict[str, Any]) -> bool:
        """Store an app and its functions (body as POSTed to /fn/register)."""
        app_id = str(body["appname"])
        functions = [
            FunctionRecord(str(f["id"]), app_id, str(f.get("name") or f["id"]), f)
            for f in body["functions"]
        ]
        app = AppRecord(
            app_id,
            str(body.get("url", "")),
            str(body.get("sdk", "")),
            str(body.get("framework", "")),
            now_ms(),
        )
        async with self.store.transaction() as tx:
            modified = await tx.upsert_app(app, functions)
        for fn_id in [k for k, f in self.machine.functions.items() if f.app_id == app_id]:
            del self.machine.functions[fn_id]
        self.machine.functions.update({f.fn_id: f for f in functions})
        self.machine.reindex()
        self._cron_changed.set()
        return modified

    # -- intake -----------------------------------------------------------------------------

    async def atomic(self, body: Callable[[Tx], Awaitable[T]], attempts: int = 5) -> T:
        """Run `body` in one transaction, again if the store says the failure was transient;
        then start the runs this process took while queueing them."""
        for attempt in range(attempts):
            taken: list[tuple[QueueItem, RunRecord]] = []
            try:
                async with self.store.transaction() as tx:
                    taken = tx.taken
                    result = await body(tx)
            except Exception as err:
                self._reserved -= len(taken)
                if attempt + 1 >= attempts or not self.store.transient(err):
                    raise
                await asyncio.sleep(0.005 * 2**attempt * (1 + random.random()))
                continue
            self._reserved -= len(taken)
            for item, run in taken:
                self._spawn(item, run)
            return result
        raise AssertionError("unreachable")

    def _take(self) -> int | None:
        if self._stopping or self._dispatcher is None:
            return None
        if len(self._inflight) + self._reserved >= self.concurrency:
            return None
        self._reserved += 1
        return now_ms() + self.lease_ms

    def _spawn(self, item: QueueItem, run: RunRecord | None = None) -> None:
        # A fresh context: a run taken inside a step (say, by an event sent from one) must
        # not inherit that step's context variables.
        task = asyncio.create_task(self._process(item, run), context=contextvars.Context())
        self._inflight.add(task)
        task.add_done_callback(self._done)

    async def send(self, events: Sequence[Event]) -> list[str]:
        batch = list(events)
        ids = await self.atomic(lambda tx: self.machine.ingest(tx, batch))
        self._wake.set()
        return ids

    async def invoke(self, fn_id: str, data: dict[str, Any]) -> str:
        fn = self.machine.functions.get(fn_id)
        if fn is None:
            raise KeyError(fn_id)
        event = {"name": "inngest/function.invoked", "data": data, "ts": now_ms()}
        run_id = await self.atomic(lambda tx: self.machine.start_run(tx, fn, [event]))
        self._wake.set()
        return run_id

    async def signal(self, name: str, data: Any) -> str | None:
        async def body(tx: Tx) -> str | None:
            found = await tx.take_signal(name)
            if found is not None:
                await self.machine.resolve(tx, found[0], found[1], {"signal": name, "data": data})
            return None if found is None else found[0]

        run_id = await self.atomic(body)
        self._wake.set()
        return run_id

    async def cancel(
        self, run_id: str, reason: str = "cancelled through the API"
    ) -> RunRecord | None:
        async def body(tx: Tx) -> RunRecord | None:
            run = await tx.lock_run(run_id)
            if run is not None and not run.status.finished:
                await self.machine.finish(tx, run, RunStatus.CANCELLED, reason=reason)
                run = await tx.get_run(run_id)
            return run

        run = await self.atomic(body)
        self._wake.set()
        self._settled(run_id)
        return run

    async def rerun(self, run_id: str) -> str | None:
        async def body(tx: Tx) -> str | None:
            run = await tx.get_run(run_id)
            fn = self.machine.functions.get(run.fn_id) if run else None
            if run is None or fn is None:
                return None
            return await self.machine.start_run(tx, fn, run.events)

        new = await self.atomic(body)
        self._wake.set()
        return new

    async def wait_for_run(self, run_id: str, timeout: float | None) -> RunRecord | None:
        """The run once it has finished (or as it is when `timeout` seconds pass)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._run_waiters.setdefault(run_id, []).append(fut)
        try:
            async with self.store.snapshot() as tx:
                run = await tx.get_run(run_id)
            if run is None or run.status.finished:
                return run
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, timeout)
        finally:
            waiters = self._run_waiters.get(run_id, [])
            if fut in waiters:
                waiters.remove(fut)
            if not waiters:
                self._run_waiters.pop(run_id, None)
        async with self.store.snapshot() as tx:
            return await tx.get_run(run_id)

    def _settled(self, run_id: str) -> None:
        for fut in self._run_waiters.pop(run_id, []):
            if not fut.done():
                fut.set_result(None)

    # -- dispatching ------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while not self._stopping:
            free = self.concurrency - len(self._inflight) - self._reserved
            items: list[QueueItem] = []
            if free > 0:
                try:
                    async with self.store.transaction() as tx:
                        items = await tx.claim(now_ms(), free, self.lease_ms)
                        if self.machine.has_flow and len(items) < free:
                            items += await flow.claim(tx, free - len(items), self.lease_ms)
                        nxt = await tx.next_available_at()
                except Exception as err:
                    # Nothing was leased (the transaction rolled back): claim again. A deadlock
                    # with a run's own transaction is expected now and then on a shared store.
                    if self.store.transient(err):
                        _log.debug("claiming work met %s; retrying", err)
                        continue
                    _log.exception("claiming work failed; retrying")
                    items, nxt = [], None
                if items:
                    fault("claim.committed")
                for item in items:
                    self._spawn(item)
                if len(items) == free:
                    continue
            else:
                nxt = None
            delay = self.poll_interval
            if nxt is not None:
                delay = min(delay, max(0.0, (nxt - now_ms()) / 1000))
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()

    async def _schedule(self) -> None:
        """Start cron runs when their ticks come (one run for ticks missed while down)."""
        seen: dict[str, int] = {}
        while not self._stopping:
            now = now_ms()
            soonest = now + 60_000
            for fn, spec in self.machine.cron_triggers():
                key = f"{fn.fn_id}|{spec}"
                try:
                    due = cron.latest_tick(spec, now)
                    if key not in seen:  # first look: a new schedule starts at its next tick
                        async with self.store.snapshot() as tx:
                            stored = await tx.get_key("cron", key)
                        if stored is None:
                            await self.atomic(_advance(key, due))
                            stored = due
                        seen[key] = stored
                    if due > seen[key]:
                        await self.atomic(_fire(self.machine, fn, spec, due))
                        seen[key] = due
                        self._wake.set()
                    soonest = min(soonest, cron.next_tick(spec, now))
                except Exception:
                    _log.exception("cron schedule %r of %s failed; trying again", spec, fn.fn_id)
            self._cron_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._cron_changed.wait(), max(0.0, (soonest - now_ms()) / 1000)
                )

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("processing a queue item failed", exc_info=task.exception())
        self._wake.set()

    async def _process(self, item: QueueItem, new_run: RunRecord | None = None) -> None:
        """Call the app for `item` and apply its answer (`new_run`: a run just taken, so
        nothing needs reading)."""
        if item.kind in (ItemKind.RESUME, ItemKind.FLUSH, ItemKind.TIMEOUT):
            await self.atomic(lambda tx: self.machine.fire(tx, item))
            self._wake.set()
            return
        run: RunRecord | None = new_run
        memos: dict[str, Any] = {}
        if run is None:
            async with self.store.snapshot() as tx:
                run = await tx.get_run(item.run_id)
                memos = await tx.get_memos(item.run_id) if run is not None else {}
        if run is None or run.status.finished:
            await self.atomic(lambda tx: tx.delete_item(item.id))
            return
        fn = self.machine.functions.get(run.fn_id)
        if fn is None:
            gone = run
            await self.atomic(lambda tx: self.machine.fail_unregistered(tx, gone))
            self._settled(run.run_id)
            return
        started = now_ms()
        request = self.machine.request_body(run, item, memos)
        steps = _Steps(self, item, fn)
        result = await self._call(fn, item, request, steps)
        if (
            steps.count
        ):  # steps were checkpointed, so what the answer reports is a later step's attempt
            item = dataclasses.replace(item, attempt=0)
        answered = item
        fault("answer.received")

        async def body(tx: Tx) -> RunRecord | None:
            current = await tx.lock_run(run.run_id)
            if current is None or current.status.finished:
                await tx.delete_item(answered.id)
                return None
            for rec, memo in steps.buffer:  # finished steps not yet stored: now, with the answer
                if await tx.put_memo(rec.run_id, rec.step, memo):
                    await tx.add_history(rec)
            await self.machine.apply(tx, answered, current, result, started)
            return next((r for r in tx.finished if r.run_id == run.run_id), current)

        after = await self.atomic(body)
        fault("answer.committed")
        self._wake.set()
        self._report(fn, item, result, after)

    async def _call(
        self, fn: FunctionRecord, item: QueueItem, request: dict[str, Any], steps: _Steps
    ) -> CallResult:
        target = item.step if item.kind is ItemKind.STEP else None
        renew = asyncio.create_task(self._renew(item))
        try:
            if self.inproc.serves(fn.url):
                hooks = Checkpoints(record=steps.record, flush=steps.flush)
                return await self.inproc.call(fn, target, request, hooks)
            return await self.http.call(fn, target, request, None)
        except Exception as err:
            _log.exception("calling %s failed", fn.fn_id)
            return CallResult(500, {}, {"name": type(err).__name__, "message": str(err)})
        finally:
            renew.cancel()

    async def _renew(self, item: QueueItem) -> None:
        """Keep the item's lease while its request runs, through database hiccups too."""
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                async with self.store.transaction() as tx:
                    await tx.extend_lease(item.id, now_ms() + self.lease_ms)
            except Exception as err:
                _log.warning(
                    "renewing the lease of queue item %s failed (%s); retrying", item.id, err
                )

    def _report(
        self, fn: FunctionRecord, item: QueueItem, result: CallResult, run: RunRecord | None
    ) -> None:
        if isinstance(result.body, list):
            for op in result.body:
                if isinstance(op, dict):
                    self._emit(
                        "step",
                        {
                            "run_id": item.run_id,
                            "fn_id": fn.fn_id,
                            "step": op.get("displayName"),
                            "op": op.get("op"),
                            "data": op.get("data"),
                            "error": op.get("error"),
                        },
                    )
        if run is not None and run.status.finished:
            self._emit(
                "run",
                {
                    "run_id": run.run_id,
                    "fn_id": run.fn_id,
                    "status": run.status.value,
                    "output": run.output,
                    "error": run.error,
                },
            )
            self._settled(run.run_id)


def _advance(key: str, tick: int) -> Callable[[Tx], Awaitable[bool]]:
    return lambda tx: tx.advance_key("cron", key, tick)


def _fire(
    machine: Machine, fn: FunctionRecord, spec: str, tick: int
) -> Callable[[Tx], Awaitable[bool]]:
    return lambda tx: machine.fire_cron(tx, fn, spec, tick)


class _Steps:
    """The steps one in-process request finishes: recorded at once, made durable just before
    the next step runs (or with the request's answer), so each result is stored before
    anything else happens, with one commit per step and none extra for the last."""

    def __init__(self, orch: Orchestrator, item: QueueItem, fn: FunctionRecord) -> None:
        self.orch = orch
        self.item = item
        self.fn = fn
        self.count = 0
        self.buffer: list[tuple[HistoryRecord, dict[str, Any]]] = []

    async def record(self, op: dict[str, Any]) -> None:
        now = now_ms()
        attempt = self.item.attempt if self.count == 0 else 0
        self.count += 1
        data = op.get("data")
        rec = HistoryRecord(
            self.item.run_id,
            op["id"],
            op["displayName"],
            op["op"],
            attempt,
            op.get("started_at", now),
            now,
            data,
        )
        self.buffer.append((rec, {"data": data}))
        details = {
            "run_id": self.item.run_id,
            "fn_id": self.fn.fn_id,
            "step": op["displayName"],
            "op": op["op"],
            "data": data,
        }
        self.orch._emit("step", details)

    async def flush(self) -> None:
        while self.buffer:
            rec, memo = self.buffer[0]
            if not await self.orch.store.checkpoint(rec, memo):
                raise RunCancelledError(f"run {rec.run_id} has ended; its request stops here")
            fault("checkpoint.committed")
            self.buffer.pop(0)


def parse_events(body: Any) -> list[Event]:
    """Events from a request body (one object or a list), or ValueError naming the bad field."""
    items = body if isinstance(body, list) else [body]
    if not items:
        raise ValueError("no events: send one event object or a non-empty array")
    events = []
    for i, raw in enumerate(items):
        where = f"events[{i}]" if isinstance(body, list) else "event"
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: must be a JSON object with a 'name'")
        try:
            events.append(Event.model_validate(raw))
        except pydantic.ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "event"
            raise ValueError(f"{where}.{field}: {first['msg']}") from None
    return events


__all__ = ["ConfigError", "Orchestrator", "RunCancelledError", "parse_events"]
