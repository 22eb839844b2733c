"""The orchestrator's entry points: start and stop, registration, and what the API, the CLI
and embedded apps ask of it (send events, invoke, signal, cancel, rerun, wait for a run).

Each entry point runs one unit of work through the dispatcher, which carries out its effects
after the commit; on start, work left in flight by a crashed process is taken up again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from .._limits import RunLimits
from ..events import Event
from ..options import Limits as RunLimitOptions
from ..protocol import SystemEvent
from . import intake, lifecycle
from . import rerun as rerunning
from .dispatch import Dispatcher, Limits
from .registry import Registry
from .scheduler import Scheduler
from .store import AppRecord, FunctionRecord, RunRecord, RunStatus, Store, now_ms
from .transport import HttpTransport, InProcessTransport
from .unit import Unit
from .watch import Listener, Watchers

_log = logging.getLogger("durable.orchestrator")

DEFAULT_BACKOFF = (15, 30, 60, 120, 300, 600, 1200, 2400, 3600, 7200)
FAST_BACKOFF = (0.05, 0.1, 0.2, 0.5, 1, 2)


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
        limits: RunLimitOptions | None = None,
        http_checkpoints: bool | None = None,
    ) -> None:
        """`limits`: what a run may store, for every function that does not set its own
        (`durable_core.Limits`; unset fields keep the defaults: 4 MB per output, 32 MB of
        step results per run, 20,000 steps per run). `http_checkpoints`: whether requests
        over HTTP name their queue item (`ctx.qi_id`), so an SDK may checkpoint each step to
        `/v1/checkpoint/{run_id}/async` and run a chain of steps in one request; by default on
        with a store one process owns (SQLite), off with a shared one (PostgreSQL), where an
        app checkpoints through one orchestrator's URL whatever process dispatched it."""
        self.store = store
        self.signing_key = signing_key
        self.event_keys = set(event_keys) if event_keys is not None else None
        self.functions = Registry()
        self.watchers = Watchers()
        self.run_limits = limits.over(RunLimits()) if limits is not None else RunLimits()
        settings = Limits(
            tuple(backoff), concurrency, lease_ms, poll_interval, self.run_limits, request_timeout
        )
        shared = store.shared if http_checkpoints is None else not http_checkpoints
        settings = dataclasses.replace(settings, http_checkpoints=not shared)
        http = HttpTransport(
            signing_key=signing_key, timeout=request_timeout, connections=concurrency
        )
        self.dispatcher = Dispatcher(store, self.functions, self.watchers, settings, http)
        self.scheduler = Scheduler(self.dispatcher, self.functions)
        self._background: set[asyncio.Task[None]] = set()

    @property
    def production(self) -> bool:
        return self.signing_key is not None

    @property
    def inproc(self) -> InProcessTransport:
        return self.dispatcher.inproc

    @property
    def http(self) -> HttpTransport:
        return self.dispatcher.http

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
        self.functions.has_flow = leftover
        self.functions.replace_all(functions)
        if released:
            _log.info("resuming %d queue item(s) left in flight", released)
        await self.store.subscribe(self._notified)
        self.dispatcher.start()
        self.scheduler.start()

    def _notified(self, what: str) -> None:
        """Another process queued work or changed functions (shared stores)."""
        if what == "functions":
            task = asyncio.create_task(self.reload_functions())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        self.dispatcher.wake()

    async def reload_functions(self) -> None:
        async with self.store.snapshot() as tx:
            functions = await tx.list_functions()
        self.functions.replace_all(functions)
        self.scheduler.changed.set()

    async def stop(self) -> None:
        self.dispatcher.stopping = True
        await self.scheduler.stop()
        await self.dispatcher.stop()
        await self.http.aclose()
        await self.dispatcher.gateway.aclose()
        await self.store.close()

    def wake(self) -> None:
        self.dispatcher.wake()

    def on_change(self, listener: Listener) -> None:
        """Call `listener(kind, details)` on step and run changes (for progress output)."""
        self.watchers.add_listener(listener)

    # -- registration -----------------------------------------------------------------------

    async def register(self, body: dict[str, Any]) -> bool:
        """Store an app and its functions (body as POSTed to /fn/register)."""
        app_id = str(body["appname"])
        functions = [
            FunctionRecord(str(f["id"]), app_id, str(f.get("name") or f["id"]), f)
            for f in body["functions"]
        ]
        url, sdk, framework = (str(body.get(k, "")) for k in ("url", "sdk", "framework"))
        app = AppRecord(app_id, url, sdk, framework, now_ms())
        async with self.store.transaction() as tx:
            modified = await tx.upsert_app(app, functions)
        self.functions.replace_app(app_id, functions)
        self.scheduler.changed.set()
        return modified

    # -- what callers ask -------------------------------------------------------------------

    async def send(self, events: Sequence[Event]) -> list[str]:
        batch = list(events)
        ids = await self.dispatcher.atomic(lambda unit: intake.ingest(unit, batch))
        self.wake()
        return ids

    async def invoke(self, fn_id: str, data: dict[str, Any]) -> str:
        fn = self.functions.get(fn_id)
        if fn is None:
            raise KeyError(fn_id)
        event = {"name": SystemEvent.FUNCTION_INVOKED, "data": data, "ts": now_ms()}
        run_id = await self.dispatcher.atomic(lambda unit: lifecycle.start_run(unit, fn, [event]))
        self.wake()
        return run_id

    async def signal(self, name: str, data: Any) -> str | None:
        async def body(unit: Unit) -> str | None:
            found = await unit.tx.take_signal(name)
            if found is not None:
                memo = {"signal": name, "data": data}
                await lifecycle.resolve(unit, found[0], found[1], memo)
            return None if found is None else found[0]

        run_id = await self.dispatcher.atomic(body)
        self.wake()
        return run_id

    async def cancel(
        self, run_id: str, reason: str = "cancelled through the API"
    ) -> RunRecord | None:
        async def body(unit: Unit) -> RunRecord | None:
            run = await unit.tx.lock_run(run_id)
            if run is not None and not run.status.finished:
                await lifecycle.finish(unit, run, RunStatus.CANCELLED, reason=reason)
                run = await unit.tx.get_run(run_id)
            return run

        run = await self.dispatcher.atomic(body)
        self.wake()
        return run

    async def rerun(
        self, run_id: str, from_step: str | None = None, output: Any = rerunning.NO_OUTPUT
    ) -> str | None:
        """A new run of `run_id`'s function on its event (None if the run or its function is
        gone); from `from_step`, with the results of the steps before it copied
        (`rerun.py`), and `output` as that step's result if given. Raises
        `rerun.UnknownStep` for a step the run does not have."""

        async def body(unit: Unit) -> str | None:
            run = await unit.tx.get_run(run_id)
            fn = self.functions.get(run.fn_id) if run else None
            if run is None or fn is None:
                return None
            return await rerunning.rerun(unit, run, fn, from_step, output)

        new = await self.dispatcher.atomic(body)
        self.wake()
        return new

    async def wait_for_run(self, run_id: str, timeout: float | None) -> RunRecord | None:
        """The run once it has finished (or as it is when `timeout` seconds pass)."""
        fut = self.watchers.expect(run_id)
        try:
            async with self.store.snapshot() as tx:
                run = await tx.get_run(run_id)
            if run is None or run.status.finished:
                return run
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, timeout)
        finally:
            self.watchers.forget(run_id, fut)
        async with self.store.snapshot() as tx:
            return await tx.get_run(run_id)
