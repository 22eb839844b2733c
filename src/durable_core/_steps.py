"""The step API: `ctx.step.run`, `sleep`, `sleep_until`, `wait_for_event`, `wait_for_signal`,
`send_event`, `invoke` and `parallel`.

`_StepBase` declares each kind of step and restores its stored result; `Step` (async) and
`SyncStep` only differ in how they wait for the engine's decision (see `_engine.py`).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import datetime as _dt
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from . import _serialize
from ._durations import DurationLike, format_duration, to_iso_utc, to_timedelta
from ._engine import EXECUTE, Memo, Opcode, Replay, StepInfo
from ._faults import fault
from .errors import NestedStepError, NonRetriableError, RetryAfterError
from .events import Event, Signal

if TYPE_CHECKING:
    from ._driver import AsyncRunner
    from .function import Function

T = TypeVar("T")
Events = Event | dict[str, Any] | Sequence[Event | dict[str, Any]]
AsyncSender = Callable[[list[Event]], Awaitable[list[str]]]
SyncSender = Callable[[list[Event]], list[str]]


@dataclasses.dataclass(frozen=True, slots=True)
class Checkpoints:
    """How an in-process orchestrator keeps the steps a request runs one after another.

    `record(op)`: a step finished (its StepRun op, plus `started_at` in ms); `flush()`: a step
    is about to run, so what was recorded must be durable now. What is still recorded when the
    request ends is stored with its answer, in the same transaction.
    """

    record: Callable[[dict[str, Any]], Awaitable[None]]
    flush: Callable[[], Awaitable[None]]


@dataclasses.dataclass(frozen=True, slots=True)
class SyncCheckpoints:
    record: Callable[[dict[str, Any]], None]
    flush: Callable[[], None]


AsyncCheckpoint = Checkpoints
SyncCheckpoint = SyncCheckpoints

_running_step: contextvars.ContextVar[StepInfo | None] = contextvars.ContextVar(
    "durable_running_step", default=None
)
_explicit_parallel: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "durable_explicit_parallel", default=False
)


class StopRequest(BaseException):
    """Ends the request once the engine has decided its result. Not catchable by `except Exception`."""


class _Parked(BaseException):
    """A new step inside a sync `parallel(...)`: collected, then the next callable runs."""


def _as_events(events: Events) -> list[Event]:
    items = [events] if isinstance(events, Event | dict) else list(events)
    return [e if isinstance(e, Event) else Event.model_validate(e) for e in items]


class _StepBase:
    def __init__(self, replay: Replay, app_id: str) -> None:
        self._replay = replay
        self._app_id = app_id

    def _declare(
        self, step_id: str, op: Opcode, name: str | None = None, opts: dict[str, Any] | None = None
    ) -> StepInfo:
        return self._replay.declare(step_id, op, name, opts, _explicit_parallel.get())

    def _enter(self, info: StepInfo) -> None:
        outer = _running_step.get()
        if outer is not None:
            # Recorded on the replay too, so user code that swallows it cannot hide it.
            raise self._replay.abort(
                NestedStepError(
                    f"step {info.user_id!r} was called inside step {outer.user_id!r}: steps cannot "
                    "be nested. Call it from the function body, after the outer step returns."
                )
            )

    def _sleep(self, step_id: str, duration: DurationLike) -> StepInfo:
        until = _dt.datetime.now(_dt.UTC) + to_timedelta(duration)
        return self._declare(step_id, Opcode.SLEEP, to_iso_utc(until))

    def _sleep_until(self, step_id: str, until: _dt.datetime) -> StepInfo:
        if not isinstance(until, _dt.datetime):
            raise TypeError(f"sleep_until needs a datetime, not {type(until).__name__}")
        return self._declare(step_id, Opcode.SLEEP, to_iso_utc(until))

    def _wait_event(
        self, step_id: str, event: str, if_: str | None, timeout: DurationLike
    ) -> StepInfo:
        opts = {"if": if_, "timeout": format_duration(timeout)}
        return self._declare(step_id, Opcode.WAIT_FOR_EVENT, event, opts)

    def _wait_signal(
        self, step_id: str, signal: str, timeout: DurationLike, on_conflict: str
    ) -> StepInfo:
        if on_conflict not in ("replace", "fail"):
            raise ValueError("on_conflict must be 'replace' or 'fail'")
        opts = {"signal": signal, "timeout": format_duration(timeout), "conflict": on_conflict}
        return self._declare(step_id, Opcode.WAIT_FOR_SIGNAL, step_id, opts)

    def _invoke(
        self,
        step_id: str,
        function: Function[Any] | str,
        data: dict[str, Any] | None,
        timeout: DurationLike | None,
    ) -> StepInfo:
        fn_id = function if isinstance(function, str) else function.local_id
        opts = {
            "function_id": f"{self._app_id}-{fn_id}",
            "payload": {"data": data, "v": None},
            "timeout": None if timeout is None else format_duration(timeout),
        }
        return self._declare(step_id, Opcode.INVOKE, step_id, opts)

    @staticmethod
    def _restore(memo: Memo, tp: Any, info: StepInfo) -> Any:
        if memo.error is not None:
            raise memo.error
        return _serialize.from_json_value(memo.data, tp, what=f"step {info.user_id!r}")

    @staticmethod
    def _restore_event(memo: Memo) -> Event | None:
        return None if memo.data is None else Event.model_validate(memo.data)

    @staticmethod
    def _restore_signal(memo: Memo) -> Signal | None:
        return None if memo.data is None else Signal.model_validate(memo.data)

    @staticmethod
    def _invoke_type(function: Function[Any] | str) -> Any:
        return None if isinstance(function, str) else function.output_type

    def _serialize_output(self, info: StepInfo, value: object) -> object:
        return _serialize.to_json_value(value, what=f"step {info.user_id!r}")


class Step(_StepBase):
    """Steps for async functions: every method returns an awaitable."""

    def __init__(
        self,
        replay: Replay,
        app_id: str,
        runner: AsyncRunner,
        sender: AsyncSender,
        checkpoint: AsyncCheckpoint | None = None,
    ) -> None:
        super().__init__(replay, app_id)
        self._runner = runner
        self._sender = sender
        self._checkpoint = checkpoint

    async def _drive(
        self, info: StepInfo, handler: Callable[..., Any] | None = None, args: tuple[Any, ...] = ()
    ) -> Memo:
        self._enter(info)
        decision = self._replay.report(info)
        if isinstance(decision, Memo):
            return decision
        self._runner.notify()
        if decision is not EXECUTE:
            decision = await self._runner.park(info)
        if handler is None:
            raise RuntimeError(f"step {info.user_id!r} cannot be executed in place")
        if self._checkpoint is not None:
            await self._checkpoint.flush()  # the previous step's result is durable before this runs
        token = _running_step.set(info)
        started_ms = int(time.time() * 1000)
        try:
            out = handler(*args)
            if inspect.isawaitable(out):
                out = await out
            data = self._serialize_output(info, out)
            fault("step.ran")
        except (NonRetriableError, RetryAfterError) as err:
            _running_step.reset(token)
            self._replay.abort(err)
            self._runner.notify()
            await self._runner.park(info)
            raise AssertionError("unreachable: a finished request resumed a step") from None
        except Exception as err:
            if err.__traceback__ is not None:  # drop this frame: the user's code is what matters
                err.__traceback__ = err.__traceback__.tb_next
            self._replay.fail(info, err)
        else:
            done = self._replay.complete(info, data)
            if isinstance(done, Memo) and self._checkpoint is not None:
                _running_step.reset(token)
                await self._checkpoint.record(
                    info.to_op(Opcode.STEP_RUN, data=data, started_at=started_ms)
                )
                return done
        finally:
            if _running_step.get() is info:
                _running_step.reset(token)
        self._runner.notify()
        await self._runner.park(info)
        raise AssertionError("unreachable: a finished request resumed a step")

    def run(
        self,
        step_id: str,
        handler: Callable[..., Awaitable[T]] | Callable[..., T],
        *args: Any,
        output_type: type[T] | None = None,
    ) -> Awaitable[T]:
        """Run `handler(*args)` once, retried on error; its JSON result is stored and replayed."""
        info = self._declare(step_id, Opcode.STEP_RUN)

        async def go() -> T:
            memo = await self._drive(info, handler, args)
            tp = output_type if output_type is not None else _serialize.return_type(handler)
            return cast(T, self._restore(memo, tp, info))

        return go()

    async def _after(self, info: StepInfo) -> Memo:
        return await self._drive(info)

    async def sleep(self, step_id: str, duration: DurationLike) -> None:
        """Pause for `duration` ("24h", a timedelta or seconds) without holding a worker."""
        await self._after(self._sleep(step_id, duration))

    async def sleep_until(self, step_id: str, until: _dt.datetime) -> None:
        await self._after(self._sleep_until(step_id, until))

    async def wait_for_event(
        self, step_id: str, *, event: str, timeout: DurationLike, if_: str | None = None
    ) -> Event | None:
        """The first `event` sent after this step that matches the CEL `if_`, or None on timeout."""
        return self._restore_event(
            await self._after(self._wait_event(step_id, event, if_, timeout))
        )

    async def wait_for_signal(
        self,
        step_id: str,
        *,
        signal: str,
        timeout: DurationLike,
        on_conflict: Literal["replace", "fail"] = "replace",
    ) -> Signal | None:
        memo = await self._after(self._wait_signal(step_id, signal, timeout, on_conflict))
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
        return cast(T, self._restore(await self._after(info), self._invoke_type(function), info))

    def send_event(self, step_id: str, events: Events) -> Awaitable[list[str]]:
        """Send events (once, as a step); returns their ids."""
        batch = _as_events(events)
        return self.run(step_id, functools.partial(self._sender, batch), output_type=list[str])

    async def parallel(self, *callables: Callable[[], Awaitable[Any]]) -> tuple[Any, ...]:
        """Run step callables in parallel; `asyncio.gather` over steps works just as well."""
        token = _explicit_parallel.set(True)
        try:
            # Tasks copy the context now, so steps declared inside them see the flag.
            tasks = [asyncio.ensure_future(cb()) for cb in callables]
        finally:
            _explicit_parallel.reset(token)
        return tuple(await asyncio.gather(*tasks))


class SyncStep(_StepBase):
    """Steps for sync functions: every method returns its result directly."""

    def __init__(
        self,
        replay: Replay,
        app_id: str,
        sender: SyncSender,
        checkpoint: SyncCheckpoint | None = None,
    ) -> None:
        super().__init__(replay, app_id)
        self._sender = sender
        self._checkpoint = checkpoint

    def _drive(
        self, info: StepInfo, handler: Callable[..., Any] | None = None, args: tuple[Any, ...] = ()
    ) -> Memo:
        self._enter(info)
        decision = self._replay.report(info)
        if isinstance(decision, Memo):
            return decision
        if decision is not EXECUTE:
            if info.in_parallel:
                raise _Parked
            if self._replay.settle() is not info:
                raise StopRequest
        if handler is None:
            raise RuntimeError(f"step {info.user_id!r} cannot be executed in place")
        if self._checkpoint is not None:
            self._checkpoint.flush()  # the previous step's result is durable before this runs
        token = _running_step.set(info)
        started_ms = int(time.time() * 1000)
        try:
            out = handler(*args)
            if inspect.isawaitable(out):
                if inspect.iscoroutine(out):
                    out.close()
                raise NonRetriableError(
                    f"step {info.user_id!r} has an async handler but the function is sync: make "
                    "the function `async def`, or give the step a plain `def` handler"
                )
            data = self._serialize_output(info, out)
            fault("step.ran")
        except (NonRetriableError, RetryAfterError) as err:
            self._replay.abort(err)
            raise StopRequest from None
        except Exception as err:
            if err.__traceback__ is not None:  # drop this frame: the user's code is what matters
                err.__traceback__ = err.__traceback__.tb_next
            self._replay.fail(info, err)
        else:
            done = self._replay.complete(info, data)
            if isinstance(done, Memo) and self._checkpoint is not None:
                _running_step.reset(token)
                self._checkpoint.record(
                    info.to_op(Opcode.STEP_RUN, data=data, started_at=started_ms)
                )
                return done
        finally:
            if _running_step.get() is info:
                _running_step.reset(token)
        raise StopRequest

    def run(
        self,
        step_id: str,
        handler: Callable[..., T],
        *args: Any,
        output_type: type[T] | None = None,
    ) -> T:
        info = self._declare(step_id, Opcode.STEP_RUN)
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

    def send_event(self, step_id: str, events: Events) -> list[str]:
        batch = _as_events(events)
        return self.run(step_id, functools.partial(self._sender, batch), output_type=list[str])

    def parallel(self, *callables: Callable[[], Any]) -> tuple[Any, ...]:
        """Run step callables in parallel: new steps are planned together, memoized ones return."""
        token = _explicit_parallel.set(True)
        results: list[Any] = []
        parked = False
        try:
            for cb in callables:
                try:
                    results.append(cb())
                except _Parked:
                    parked = True
        finally:
            _explicit_parallel.reset(token)
        if parked:
            self._replay.settle()
            raise StopRequest
        return tuple(results)
