"""The step API: `ctx.step.run`, `sleep`, `sleep_until`, `wait_for_event`, `wait_for_signal`,
`send_event`, `invoke`, `fetch`, `ai.infer` and `parallel`.

`Step` (async) and `SyncStep` share the step lifecycle of `_lifecycle.py`; they differ only
in how they call the handler and how they wait for their turn (see `_drive`).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol, TypeVar, cast

from . import _serialize
from ._durations import DurationLike
from ._engine import EXECUTE, Memo, Replay, StepInfo
from ._lifecycle import (
    Checkpoints,
    StepLifecycle,
    StopRequest,
    SyncCheckpoints,
    explicit_parallel,
)
from .errors import NonRetriableError
from .events import Event, Events, Signal
from .fetch import FetchResponse
from .function import Function
from .types import AsyncSender, SyncSender

T = TypeVar("T")


class Runner(Protocol):
    """Runs an async function and decides when its steps get their turn (`_driver.AsyncRunner`)."""

    def notify(self) -> None: ...
    async def park(self, info: StepInfo) -> object: ...


class _Parked(BaseException):
    """A new step inside a sync `parallel(...)`: collected, then the next callable runs."""


class Step(StepLifecycle):
    """Steps for async functions: every method returns an awaitable."""

    def __init__(
        self,
        replay: Replay,
        app_id: str,
        runner: Runner,
        sender: AsyncSender,
        checkpoint: Checkpoints | None = None,
    ) -> None:
        super().__init__(replay, app_id)
        self._runner = runner
        self._sender = sender
        self._checkpoint = checkpoint
        self.ai = AI(self)

    async def _drive(
        self, info: StepInfo, handler: Callable[..., Any] | None = None, args: tuple[Any, ...] = ()
    ) -> Memo:
        decision = self._report(info)
        if isinstance(decision, Memo):
            return decision
        self._runner.notify()
        if decision is not EXECUTE:
            await self._runner.park(info)  # until the function settles and this step is picked
        execution = self._execution(info, handler)
        if self._checkpoint is not None:
            try:  # the previous step's result is durable before this one runs
                await self._checkpoint.flush()
            except Exception as err:
                raise self._stopped(info, err) from err
        assert handler is not None
        with execution:
            out = handler(*args)
            if inspect.isawaitable(out):
                out = await out
            execution.returned(out)
        if execution.checkpointed is not None and self._checkpoint is not None:
            memo, op = execution.checkpointed
            try:
                await self._checkpoint.record(op)
            except Exception as err:
                raise self._stopped(info, err) from err
            return memo
        self._runner.notify()
        await self._runner.park(info)  # the request has ended: this never resumes
        raise AssertionError("unreachable: a finished request resumed a step")

    def run(
        self,
        step_id: str,
        handler: Callable[..., Awaitable[T]] | Callable[..., T],
        *args: Any,
        output_type: type[T] | None = None,
    ) -> Awaitable[T]:
        """Run `handler(*args)` once, retried on error; its JSON result is stored and replayed."""
        info = self._run(step_id, handler)

        async def go() -> T:
            memo = await self._drive(info, handler, args)
            tp = output_type if output_type is not None else _serialize.return_type(handler)
            return cast(T, self._restore(memo, tp, info))

        return go()

    async def sleep(self, step_id: str, duration: DurationLike) -> None:
        """Pause for `duration` ("24h", a timedelta or seconds) without holding a worker."""
        await self._drive(self._sleep(step_id, duration))

    async def sleep_until(self, step_id: str, until: _dt.datetime) -> None:
        await self._drive(self._sleep_until(step_id, until))

    async def wait_for_event(
        self, step_id: str, *, event: str, timeout: DurationLike, if_: str | None = None
    ) -> Event | None:
        """The first `event` sent after this step that matches the CEL `if_`, or None on timeout."""
        return self._restore_event(
            await self._drive(self._wait_event(step_id, event, if_, timeout))
        )

    async def wait_for_signal(
        self,
        step_id: str,
        *,
        signal: str,
        timeout: DurationLike,
        on_conflict: Literal["replace", "fail"] = "replace",
    ) -> Signal | None:
        memo = await self._drive(self._wait_signal(step_id, signal, timeout, on_conflict))
        return self._restore_signal(memo)

    async def invoke(
        self,
        step_id: str,
        *,
        function: Function[T] | str,
        data: dict[str, Any] | None = None,
        timeout: DurationLike | None = None,
    ) -> T:
        """Run another function as a child run and return its output (StepError if it failed)."""
        info = self._invoke(step_id, function, data, timeout)
        return cast(T, self._restore(await self._drive(info), self._invoke_type(function), info))

    async def fetch(
        self,
        step_id: str,
        url: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: str | None = None,
        json: Any = None,
    ) -> FetchResponse:
        """Make an HTTP request through the orchestrator, without holding a worker while it
        runs; a 5xx, 429 or network error is retried like a failed step."""
        info = self._fetch(step_id, url, method, headers, body, json)
        return self._restore_fetch(await self._drive(info))

    def send_event(self, step_id: str, events: Events) -> Awaitable[list[str]]:
        """Send events (once, as a step); returns their ids."""
        batch = self._events(step_id, events)
        return self.run(step_id, functools.partial(self._sender, batch), output_type=list[str])

    async def parallel(self, *callables: Callable[[], Awaitable[Any]]) -> tuple[Any, ...]:
        """Run step callables in parallel; `asyncio.gather` over steps works just as well."""
        token = explicit_parallel.set(True)
        try:
            # Tasks copy the context now, so steps declared inside them see the flag.
            tasks = [asyncio.ensure_future(cb()) for cb in callables]
        finally:
            explicit_parallel.reset(token)
        return tuple(await asyncio.gather(*tasks))


class SyncStep(StepLifecycle):
    """Steps for sync functions: every method returns its result directly."""

    def __init__(
        self,
        replay: Replay,
        app_id: str,
        sender: SyncSender,
        checkpoint: SyncCheckpoints | None = None,
    ) -> None:
        super().__init__(replay, app_id)
        self._sender = sender
        self._checkpoint = checkpoint
        self.ai = SyncAI(self)

    def _drive(
        self, info: StepInfo, handler: Callable[..., Any] | None = None, args: tuple[Any, ...] = ()
    ) -> Memo:
        decision = self._report(info)
        if isinstance(decision, Memo):
            return decision
        if decision is not EXECUTE:
            if info.in_parallel:
                raise _Parked
            if self._replay.settle() is not info:  # sync code settles at once
                raise StopRequest
        execution = self._execution(info, handler)
        if self._checkpoint is not None:
            try:  # the previous step's result is durable before this one runs
                self._checkpoint.flush()
            except Exception as err:
                raise self._stopped(info, err) from err
        assert handler is not None
        with execution:
            out = handler(*args)
            if inspect.isawaitable(out):
                if inspect.iscoroutine(out):
                    out.close()
                raise NonRetriableError(
                    f"step {info.user_id!r} has an async handler but the function is sync: make "
                    "the function `async def`, or give the step a plain `def` handler"
                )
            execution.returned(out)
        if execution.checkpointed is not None and self._checkpoint is not None:
            memo, op = execution.checkpointed
            try:
                self._checkpoint.record(op)
            except Exception as err:
                raise self._stopped(info, err) from err
            return memo
        raise StopRequest

    def run(
        self,
        step_id: str,
        handler: Callable[..., T],
        *args: Any,
        output_type: type[T] | None = None,
    ) -> T:
        info = self._run(step_id, handler)
        memo = self._drive(info, handler, args)
        tp = output_type if output_type is not None else _serialize.return_type(handler)
        return cast(T, self._restore(memo, tp, info))

    def sleep(self, step_id: str, duration: DurationLike) -> None:
        self._drive(self._sleep(step_id, duration))

    def sleep_until(self, step_id: str, until: _dt.datetime) -> None:
        self._drive(self._sleep_until(step_id, until))

    def wait_for_event(
        self, step_id: str, *, event: str, timeout: DurationLike, if_: str | None = None
    ) -> Event | None:
        return self._restore_event(self._drive(self._wait_event(step_id, event, if_, timeout)))

    def wait_for_signal(
        self,
        step_id: str,
        *,
        signal: str,
        timeout: DurationLike,
        on_conflict: Literal["replace", "fail"] = "replace",
    ) -> Signal | None:
        return self._restore_signal(
            self._drive(self._wait_signal(step_id, signal, timeout, on_conflict))
        )

    def invoke(
        self,
        step_id: str,
        *,
        function: Function[T] | str,
        data: dict[str, Any] | None = None,
        timeout: DurationLike | None = None,
    ) -> T:
        info = self._invoke(step_id, function, data, timeout)
        return cast(T, self._restore(self._drive(info), self._invoke_type(function), info))

    def fetch(
        self,
        step_id: str,
        url: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: str | None = None,
        json: Any = None,
    ) -> FetchResponse:
        info = self._fetch(step_id, url, method, headers, body, json)
        return self._restore_fetch(self._drive(info))

    def send_event(self, step_id: str, events: Events) -> list[str]:
        batch = self._events(step_id, events)
        return self.run(step_id, functools.partial(self._sender, batch), output_type=list[str])

    def parallel(self, *callables: Callable[[], Any]) -> tuple[Any, ...]:
        """Run step callables in parallel: new steps are planned together, memoized ones return."""
        token = explicit_parallel.set(True)
        results: list[Any] = []
        parked = False
        try:
            for cb in callables:
                try:
                    results.append(cb())
                except _Parked:
                    parked = True
        finally:
            explicit_parallel.reset(token)
        if parked:
            self._replay.settle()
            raise StopRequest
        return tuple(results)


class AI:
    """`ctx.step.ai`: model calls the orchestrator makes while the run holds no worker."""

    def __init__(self, step: Step) -> None:
        self._step = step

    async def infer(
        self,
        step_id: str,
        *,
        url: str,
        body: dict[str, Any],
        auth_key: str | None = None,
        format: str = "openai-chat",
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """POST `body` to the model at `url` (e.g. `https://api.openai.com/v1/chat/completions`)
        and return its JSON answer, stored like a step's result. `auth_key` goes where
        `format` says (`Authorization: Bearer` for OpenAI-compatible servers). A 4xx other
        than 429 fails the step; a 429, a 5xx or a network error is retried."""
        step = self._step
        info = step._ai_infer(step_id, url, body, auth_key, format, headers)
        return cast(dict[str, Any], step._restore_ai(await step._drive(info)))


class SyncAI:
    """`ctx.step.ai` for sync functions."""

    def __init__(self, step: SyncStep) -> None:
        self._step = step

    def infer(
        self,
        step_id: str,
        *,
        url: str,
        body: dict[str, Any],
        auth_key: str | None = None,
        format: str = "openai-chat",
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        step = self._step
        info = step._ai_infer(step_id, url, body, auth_key, format, headers)
        return cast(dict[str, Any], step._restore_ai(step._drive(info)))


__all__ = [
    "AI",
    "Checkpoints",
    "Runner",
    "Step",
    "StopRequest",
    "SyncAI",
    "SyncCheckpoints",
    "SyncStep",
]
