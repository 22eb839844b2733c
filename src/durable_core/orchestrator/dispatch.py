"""Dispatch: units of work run here, and queue items are claimed, processed and answered.

New work wakes the claim loop at once; otherwise it sleeps until the next item is due, so
timers fire on time without polling. Items are claimed under a lease that is renewed while a
call runs. A unit's effects are carried out after its commit: runs it leased for this process
start at once (direct dispatch), and callers waiting for runs it finished are told.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .._faults import fault
from .._limits import Budget, RunLimits, Usage
from .._steps import Checkpoints
from ..errors import RunErrorName, run_error
from ..protocol import execution_request
from . import answers, claiming, gateway, intake, lifecycle, limits, moments, timers
from .checkpoints import StepBuffer
from .gateway import GatewayClient, GatewayRequest
from .registry import Registry
from .store import FunctionRecord, ItemKind, QueueItem, RunRecord, Store, Tx, now_ms
from .transport import Call, CallResult, HttpTransport, InProcessTransport
from .unit import Unit
from .watch import Watchers

T = TypeVar("T")

_log = logging.getLogger("durable.orchestrator")


@dataclasses.dataclass(frozen=True)
class Limits:
    backoff: tuple[float, ...]
    concurrency: int = 64
    lease_ms: int = 30_000
    poll_interval: float = 1.0
    #: What a run may store, unless its function says otherwise.
    run: RunLimits = dataclasses.field(default_factory=RunLimits)
    request_timeout: float = 300.0  # an in-process call's deadline, as HTTP calls have
    #: Requests over HTTP name their queue item, so the SDK checkpoints each step.
    http_checkpoints: bool = True
    #: Requests of `step.ai.infer` and `step.fetch` made at once; they take no dispatch slot.
    gateway_concurrency: int = 256


class Dispatcher:
    def __init__(
        self,
        store: Store,
        functions: Registry,
        watchers: Watchers,
        limits: Limits,
        http: HttpTransport,
    ) -> None:
        self.store = store
        self.functions = functions
        self.watchers = watchers
        self.limits = limits
        self.inproc = InProcessTransport()
        self.http = http
        self.gateway = GatewayClient(limits.request_timeout)
        self._gateway_slots = asyncio.Semaphore(limits.gateway_concurrency)
        self._gateway_tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None
        self._reserved = 0  # slots promised to runs taken in units not yet committed
        #: The steps of each HTTP request in flight, by queue item id: the checkpoint API
        #: stores what the app posts for that request through them.
        self.requests: dict[int, StepBuffer] = {}

    # -- units of work ----------------------------------------------------------------------

    def reserve(self) -> int | None:
        """Room for one run started at once by a unit of this process (`unit.Capacity`)."""
        if self.stopping or self._loop is None:
            return None
        if len(self._inflight) + self._reserved >= self.limits.concurrency:
            return None
        self._reserved += 1
        return now_ms() + self.limits.lease_ms

    async def atomic(self, body: Callable[[Unit], Awaitable[T]], attempts: int = 5) -> T:
        """Run `body` as one unit of work (again, if the store says the failure was
        transient); then carry out its effects."""
        for attempt in range(attempts):
            unit: Unit | None = None
            try:
                async with self.store.transaction() as tx:
                    unit = self._unit(tx)
                    result = await body(unit)
                    while unit.effects.emitted:  # system events, matched in the same unit
                        emitted = list(unit.effects.emitted)
                        unit.effects.emitted.clear()
                        await intake.ingest(unit, emitted)
            except Exception as err:
                self._reserved -= len(unit.effects.taken) if unit else 0
                if attempt + 1 >= attempts or not self.store.transient(err):
                    raise
                await asyncio.sleep(0.005 * 2**attempt * (1 + random.random()))
                continue
            self._reserved -= len(unit.effects.taken)
            for item, run in unit.effects.taken:
                self._spawn(item, run)
            for run in unit.effects.finished:
                self.watchers.settled(run.run_id)
            return result
        raise AssertionError("unreachable")

    def _unit(self, tx: Tx) -> Unit:
        return Unit(tx, self.functions, self.limits.backoff, self)

    # -- the claim loop ---------------------------------------------------------------------

    def start(self) -> None:
        self.stopping = False
        self._loop = asyncio.create_task(self._dispatch(), name="durable-dispatcher")

    async def stop(self) -> None:
        self.stopping = True
        self._wake.set()
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        tasks = self._inflight | self._gateway_tasks
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def wake(self) -> None:
        self._wake.set()

    async def _claim(self, free: int) -> tuple[list[QueueItem], int | None]:
        lease_ms = self.limits.lease_ms
        async with self.store.transaction() as tx:
            items = await tx.claim(now_ms(), free, lease_ms)
            if self.functions.has_flow and len(items) < free:
                items += await claiming.claim(tx, free - len(items), lease_ms)
            return items, await tx.next_available_at()

    async def _dispatch(self) -> None:
        while not self.stopping:
            # Gateway requests take no slot, but those waiting for one of theirs do: claimed
            # work stays bounded when many model calls are due at once.
            backlog = max(0, len(self._gateway_tasks) - self.limits.gateway_concurrency)
            free = self.limits.concurrency - len(self._inflight) - self._reserved - backlog
            nxt: int | None = None
            if free > 0:
                items: list[QueueItem] = []
                try:
                    items, nxt = await self._claim(free)
                except Exception as err:
                    # Nothing was leased (the transaction rolled back): claim again. A deadlock
                    # with a run's own transaction is expected now and then on a shared store.
                    if self.store.transient(err):
                        _log.debug("claiming work met %s; retrying", err)
                        continue
                    _log.exception("claiming work failed; retrying")
                if items:
                    fault("claim.committed")
                for item in items:
                    self._spawn(item)
                if len(items) == free:
                    continue
            delay = self.limits.poll_interval
            if nxt is not None:
                delay = min(delay, max(0.0, (nxt - now_ms()) / 1000))
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()

    def _spawn(self, item: QueueItem, run: RunRecord | None = None) -> None:
        # A fresh context: a run taken inside a step (say, by an event sent from one) must
        # not inherit that step's context variables.
        if item.kind is ItemKind.GATEWAY:  # no app is called: no dispatch slot is taken
            task = asyncio.create_task(self._gateway(item), context=contextvars.Context())
            self._gateway_tasks.add(task)
        else:
            task = asyncio.create_task(self._process(item, run), context=contextvars.Context())
            self._inflight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._gateway_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("processing a queue item failed", exc_info=task.exception())
        self._wake.set()

    # -- one queue item ---------------------------------------------------------------------

    async def _process(self, item: QueueItem, new_run: RunRecord | None = None) -> None:
        """Fire a timer, or call the app for `item` and apply its answer (`new_run`: a run
        just taken, so nothing needs reading)."""
        if item.kind in (ItemKind.RESUME, ItemKind.FLUSH, ItemKind.TIMEOUT):
            await self.atomic(lambda unit: timers.fire(unit, item))
            self._wake.set()
            return
        loaded = await self._load(item, new_run)
        if loaded is not None:
            await self._request(*loaded, item=item)

    async def _load(
        self, item: QueueItem, new_run: RunRecord | None = None
    ) -> tuple[FunctionRecord, RunRecord, dict[str, Any]] | None:
        """The function, run and memos `item` is for (`new_run`: a run just taken, so nothing
        needs reading); None, with the item consumed, when the run is over or its function
        is no longer registered."""
        run: RunRecord | None = new_run
        memos: dict[str, Any] = {}
        if run is None:
            async with self.store.snapshot() as tx:
                run = await tx.get_run(item.run_id)
                memos = await tx.get_memos(item.run_id) if run is not None else {}
        if run is None or run.status.finished:
            await self.atomic(lambda unit: unit.tx.delete_item(item.id))
            return None
        fn = self.functions.get(run.fn_id)
        if fn is None:
            gone = run
            await self.atomic(lambda unit: lifecycle.fail_unregistered(unit, gone))
            return None
        return fn, run, memos

    async def _gateway(self, item: QueueItem) -> None:
        """Make a gateway step's request (`gateway.py`) under its item's lease, and resolve the
        step with the answer or queue its next attempt."""
        loaded = await self._load(item)
        if loaded is None:
            return
        fn, run, memos = loaded
        bounds = limits.for_function(fn, self.limits.run)
        req = GatewayRequest.from_payload(item.payload or {})
        renew = asyncio.create_task(self._renew(item))
        try:
            async with self._gateway_slots:
                outcome = await self.gateway.perform(req, bounds, Usage.of(memos))
        finally:
            renew.cancel()
        at = moments.retry_at(outcome.retry_after, now_ms()) if outcome.retry_after else None
        await self.atomic(lambda unit: gateway.apply(unit, item, outcome, fn.retries + 1, at))
        self._wake.set()
        if outcome.memo is not None:
            details = {
                "run_id": run.run_id,
                "fn_id": fn.fn_id,
                "step": (item.payload or {}).get("name"),
            }
            details.update({"op": "AIGateway" if req.ai else "Gateway", **outcome.memo})
            self.watchers.emit("step", details)

    async def _request(
        self, fn: FunctionRecord, run: RunRecord, memos: dict[str, Any], *, item: QueueItem
    ) -> None:
        started = now_ms()
        bounds = limits.for_function(fn, self.limits.run)
        used = Usage.of(memos)
        owner = self.store.owner
        qi_id = None
        if self.limits.http_checkpoints:
            qi_id = str(item.id) if owner is None else f"{item.id}.{owner}"
        request = _request_body(run, item, memos, fn.retries, Budget(bounds, used), qi_id)
        http = not self.inproc.serves(fn.url)
        budget = Budget(bounds, dataclasses.replace(used))
        # Over HTTP, a step is stored only while the item is still this process's (another
        # may have taken it over if a renewal came too late); a store one process owns needs
        # no such check.
        leased = http and owner is not None
        steps = StepBuffer(self.store, self.watchers, item, fn, budget, leased, owner)
        result = await self._call(fn, item, request, steps, bounds.answer_bound)
        if steps.count:  # steps were checkpointed: the answer reports a later step's attempt
            item = dataclasses.replace(item, attempt=0)
        fault("answer.received")

        async def body(unit: Unit) -> RunRecord | None:
            answered = item
            if http and item.attempt and not steps.count:
                # Another process may have taken a checkpoint of this request (and reset it).
                stored = await unit.tx.get_item(item.id)
                if stored is not None and stored.attempt == 0:
                    answered = dataclasses.replace(item, attempt=0)
            current = await unit.tx.lock_run(run.run_id)
            if current is None or current.status.finished:
                await unit.tx.delete_item(answered.id)
                return None
            for rec, memo in steps.buffer:  # finished steps not yet stored: now, with the answer
                if await unit.tx.put_memo(rec.run_id, rec.step, memo):
                    await unit.tx.add_history(rec)
            await answers.apply(unit, answered, current, result, started, bounds, budget.usage)
            return unit.finished_run(run.run_id) or current

        after = await self.atomic(body)
        fault("answer.committed")
        self._wake.set()
        self._report(fn, item, result, after)

    async def _call(
        self,
        fn: FunctionRecord,
        item: QueueItem,
        request: dict[str, Any],
        steps: StepBuffer,
        max_body: int,
    ) -> CallResult:
        target = item.step if item.kind is ItemKind.STEP else None
        renew = asyncio.create_task(self._renew(item))
        try:
            if self.inproc.serves(fn.url):
                hooks = Checkpoints(record=steps.record, flush=steps.flush)
                return await self._in_process(Call(fn, target, request, hooks), steps)
            self.requests[item.id] = steps
            return await self.http.call(Call(fn, target, request, max_body=max_body))
        except Exception as err:
            _log.exception("calling %s failed", fn.fn_id)
            return CallResult(500, {}, {"name": type(err).__name__, "message": str(err)})
        finally:
            renew.cancel()
            if self.requests.get(item.id) is steps:
                del self.requests[item.id]

    async def _in_process(self, call: Call, steps: StepBuffer) -> CallResult:
        """An in-process call, with the deadline an HTTP call has: past it, the request is
        answered like an HTTP timeout, and a sync function still running in its thread
        stops at its next step."""
        timeout = self.limits.request_timeout
        try:
            async with asyncio.timeout(timeout):  # no task of its own, unlike wait_for
                return await self.inproc.call(call)
        except TimeoutError:
            steps.close(f"did not answer within {timeout:g} s")
        message = f"{call.fn.fn_id} did not answer within {timeout:g} s (request_timeout)"
        return CallResult(599, {}, run_error(RunErrorName.REQUEST_TIMEOUT, message))

    async def _renew(self, item: QueueItem) -> None:
        """Keep the item's lease while its request runs, through database hiccups too."""
        lease_ms = self.limits.lease_ms
        while True:
            await asyncio.sleep(lease_ms / 3000)
            try:
                async with self.store.transaction() as tx:
                    await tx.extend_lease(item.id, now_ms() + lease_ms)
            except Exception as err:
                _log.warning(
                    "renewing the lease of queue item %s failed (%s); retrying", item.id, err
                )

    def _report(
        self, fn: FunctionRecord, item: QueueItem, result: CallResult, run: RunRecord | None
    ) -> None:
        for op in result.body if isinstance(result.body, list) else []:
            if isinstance(op, dict):
                details = {"run_id": item.run_id, "fn_id": fn.fn_id, "step": op.get("displayName")}
                details.update({k: op.get(k) for k in ("op", "data", "error")})
                self.watchers.emit("step", details)
        if run is not None and run.status.finished:
            details = {"run_id": run.run_id, "fn_id": run.fn_id, "status": run.status.value}
            details.update({"output": run.output, "error": run.error})
            self.watchers.emit("run", details)
            self.watchers.settled(run.run_id)


def _request_body(
    run: RunRecord,
    item: QueueItem,
    memos: dict[str, Any],
    retries: int,
    budget: Budget,
    qi_id: str | None,
) -> dict[str, Any]:
    """The execution request for `item` of `run` (PROTOCOL.md section 4); its `qi_id` names
    the item and, on a shared store, the process that dispatched it."""
    return execution_request(
        run_id=run.run_id,
        fn_id=run.fn_id,
        events=run.events,
        memos=memos,
        attempt=item.attempt,
        max_attempts=retries + 1,
        disable_immediate_execution=bool(
            item.payload and item.payload.get("disable_immediate_execution")
        ),
        limits=budget.to_wire(),
        qi_id=qi_id,
    )
