"""The cron schedule: start each function's cron runs when their ticks come.

A tick runs once however many orchestrators share the store (its key only advances once), a
new schedule starts at its next tick, and ticks missed while no orchestrator ran collapse into
one run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

from . import cron, intake
from .dispatch import Dispatcher
from .registry import Registry
from .store import FunctionRecord, now_ms
from .unit import Unit

_log = logging.getLogger("durable.orchestrator")


class Scheduler:
    def __init__(self, dispatcher: Dispatcher, functions: Registry) -> None:
        self.dispatcher = dispatcher
        self.functions = functions
        self.changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._schedule(), name="durable-cron")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _schedule(self) -> None:
        seen: dict[str, int] = {}
        while not self.dispatcher.stopping:
            now = now_ms()
            soonest = now + 60_000
            for fn, spec in self.functions.cron_triggers():
                key = f"{fn.fn_id}|{spec}"
                try:
                    due = cron.latest_tick(spec, now)
                    if key not in seen:  # first look: a new schedule starts at its next tick
                        seen[key] = await self._last_tick(key, due)
                    if due > seen[key]:
                        await self.dispatcher.atomic(functools.partial(_fire, fn, spec, due))
                        seen[key] = due
                        self.dispatcher.wake()
                    soonest = min(soonest, cron.next_tick(spec, now))
                except Exception:
                    _log.exception("cron schedule %r of %s failed; trying again", spec, fn.fn_id)
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), max(0.0, (soonest - now_ms()) / 1000))

    async def _last_tick(self, key: str, due: int) -> int:
        """The last tick run for `key`; a schedule never seen before starts from `due`."""
        async with self.dispatcher.store.snapshot() as tx:
            stored = await tx.get_key("cron", key)
        if stored is None:
            await self.dispatcher.atomic(lambda unit: unit.tx.advance_key("cron", key, due))
            stored = due
        return stored


async def _fire(fn: FunctionRecord, spec: str, tick: int, unit: Unit) -> bool:
    return await intake.fire_cron(unit, fn, spec, tick)
