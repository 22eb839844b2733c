"""Drivers: run a user function against a `Replay` and say how the request ended.

A sync function runs to its end (or to a `StopRequest`) in one call; an async one runs as a
task that `AsyncRunner` watches until it settles. Both end the same way (`_ended`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ._engine import EXECUTE, Ops, Replay, StepInfo, _Decision
from ._lifecycle import StopRequest
from .errors import DurableError

_log = logging.getLogger("durable")

# An async function has settled when this many loop turns pass with no new step reported.
SETTLE_TICKS = 4
# Before calling a replay diverged, give slow branches this many more 1 ms turns.
DIVERGENCE_GRACE_TURNS = 50


@dataclasses.dataclass(frozen=True, slots=True)
class Returned:
    value: Any


@dataclasses.dataclass(frozen=True, slots=True)
class Raised:
    error: BaseException


Outcome = Returned | Raised | Ops


def _final(replay: Replay) -> Outcome | None:
    result = replay.result
    if isinstance(result, DurableError):
        return Raised(result)
    return result


def _ended(replay: Replay, value: Any) -> Outcome:
    """The function returned `value` (None: it was stopped): the engine's result, else that."""
    final = _final(replay)
    if final is not None:
        return final
    unreached = replay.unreached_target()
    return Raised(unreached) if unreached else Returned(value)


def run_sync(fn: Callable[[Any], Any], ctx: Any, replay: Replay) -> Outcome:
    try:
        value = fn(ctx)
    except StopRequest:
        value = None
    except Exception as err:
        return _final(replay) or Raised(err)
    return _ended(replay, value)


class AsyncRunner:
    """Runs an async function as a task; parks new steps until the function settles."""

    def __init__(self, replay: Replay) -> None:
        self._replay = replay
        self._news = asyncio.Event()
        self._parked: dict[str, asyncio.Future[_Decision]] = {}

    def notify(self) -> None:
        self._news.set()

    async def park(self, info: StepInfo) -> _Decision:
        fut: asyncio.Future[_Decision] = asyncio.get_running_loop().create_future()
        self._parked[info.hashed] = fut
        return await fut

    async def _settled(self, task: asyncio.Task[Any]) -> None:
        seen, idle = self._replay.reports, 0
        while idle < SETTLE_TICKS and not task.done():
            await asyncio.sleep(0)
            if self._replay.reports != seen:
                seen, idle = self._replay.reports, 0
            else:
                idle += 1
        grace = 0
        while self._replay.unseen_memos and grace < DIVERGENCE_GRACE_TURNS and not task.done():
            await asyncio.sleep(0.001)
            grace += 1

    async def run(self, fn: Callable[[Any], Awaitable[Any]], ctx: Any) -> Outcome:
        replay = self._replay
        task = asyncio.ensure_future(fn(ctx))
        task.add_done_callback(lambda _: self._news.set())
        try:
            while not task.done():
                await self._news.wait()
                self._news.clear()
                if replay.result is not None or task.done():
                    break
                if replay.executing is not None or not replay.pending:
                    continue
                await self._settled(task)
                if task.done():
                    break
                decision = replay.settle()
                if isinstance(decision, StepInfo):
                    parked = self._parked.pop(decision.hashed, None)
                    if parked is not None:  # else it is the target, reached and running already
                        parked.set_result(EXECUTE)
                else:
                    break
        finally:
            await self._stop(task)
        if task.cancelled():
            return _final(replay) or Raised(RuntimeError("the function was cancelled"))
        err = task.exception()
        if err is None or isinstance(err, StopRequest):
            return _ended(replay, None if err else task.result())
        return _final(replay) or Raised(err)

    async def _stop(self, task: asyncio.Task[Any]) -> None:
        for fut in self._parked.values():
            fut.cancel()
        self._parked.clear()
        for _ in range(3):
            if task.done():
                return
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        _log.warning("the function kept running after its request ended; it ignores cancellation")
