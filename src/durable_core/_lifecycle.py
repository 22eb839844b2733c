"""One step's lifecycle, shared by the async and sync step APIs (`_steps.py`).

declare → report (a stored memo returns at once) → wait for the turn to run → flush earlier
checkpoints → run the handler → record the result (or the error) with the engine → hand the
next checkpoint to the orchestrator, or end the request.

`StepLifecycle` does every part that does not wait. The frontends only call the handler and
wait, each in its own way (`await` or a plain call); see `Step._drive` and `SyncStep._drive`.
"""

from __future__ import annotations

import contextvars
import dataclasses
import datetime as _dt
import json
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import _serialize, tracing
from ._durations import DurationLike, format_duration, to_iso_utc, to_timedelta
from ._engine import Decision, Memo, Ops, Replay, StepInfo
from ._faults import fault
from .errors import (
    CheckpointError,
    DurableError,
    InvalidStepError,
    NestedStepError,
    NonRetriableError,
    RetryAfterError,
)
from .events import Event, Events, Signal, as_events
from .fetch import METHODS, FetchResponse, headers_problem, url_problem
from .function import Function
from .orchestrator import expressions
from .protocol import Opcode
from .types import JSONObject

if TYPE_CHECKING:
    from ._otel_spans import RunTrace, StepSpan


@dataclasses.dataclass(frozen=True, slots=True)
class Checkpoints:
    """How an in-process orchestrator keeps the steps a request runs one after another.

    `record(op)`: a step finished (its StepRun op, plus `started_at` in ms); `flush()`: a step
    is about to run, so what was recorded must be durable now. What is still recorded when the
    request ends is stored with its answer, in the same transaction.
    """

    record: Callable[[JSONObject], Awaitable[None]]
    flush: Callable[[], Awaitable[None]]


@dataclasses.dataclass(frozen=True, slots=True)
class SyncCheckpoints:
    """`Checkpoints` for sync functions."""

    record: Callable[[JSONObject], None]
    flush: Callable[[], None]


_running_step: contextvars.ContextVar[StepInfo | None] = contextvars.ContextVar(
    "durable_running_step", default=None
)
explicit_parallel: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "durable_explicit_parallel", default=False
)


class CheckpointDeferred(Exception):
    """A checkpoint over HTTP was not taken: the request ends at this step, answering with the
    steps it finished (or, for a superseded request, with nothing); see `_http_checkpoint`."""


class StopRequest(BaseException):
    """Ends the request once the engine has decided its result. Not catchable by `except Exception`."""


class Execution:
    """One run of a step's handler: `with execution: execution.returned(handler(...))`.

    Leaving the block records the outcome with the engine: the output (`returned`), an error
    that decides the run (`abort`), or a retriable error (`fail`). Afterwards `checkpointed`
    holds the memo to go on with and the op to record when the step was checkpointed;
    otherwise the request ends.
    """

    def __init__(self, replay: Replay, info: StepInfo, run_trace: RunTrace | None = None) -> None:
        self._replay = replay
        self.info = info
        self.checkpointed: tuple[Memo, JSONObject] | None = None
        self._token: contextvars.Token[StepInfo | None] | None = None
        self._started_ms = 0
        self._trace = run_trace
        self._span: StepSpan | None = None

    def __enter__(self) -> Execution:
        self._token = _running_step.set(self.info)
        self._started_ms = int(time.time() * 1000)
        if self._trace is not None:  # the attempt's span, current while the handler runs
            self._span = self._trace.step(self.info, self._replay.attempt)
        return self

    def returned(self, output: object) -> None:
        info = self.info
        data = _serialize.to_json_value(output, what=f"step {info.user_id!r}")
        fault("step.ran")
        done = self._replay.complete(info, data)
        if isinstance(done, Memo):  # checkpointing: the function goes on with the memo
            op = info.to_op(Opcode.STEP_RUN, data=data, started_at=self._started_ms)
            self.checkpointed = (done, op)

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if self._token is not None and _running_step.get() is self.info:
            _running_step.reset(self._token)
        if self._span is not None:
            self._span.end(tracing.step_outcome(err, self._replay), err)
        if err is None:
            return False
        if isinstance(err, NonRetriableError | RetryAfterError):
            self._replay.abort(err)  # it decides the run: the request ends with it
            return True
        if isinstance(err, Exception):
            if err.__traceback__ is not None:  # drop this frame: the user's code is what matters
                err.__traceback__ = err.__traceback__.tb_next
            self._replay.fail(self.info, err)
            return True
        return False  # the request is stopping (StopRequest, cancellation): let it


class StepLifecycle:
    """Declares each kind of step, reports it, runs it and restores its stored result."""

    def __init__(self, replay: Replay, app_id: str) -> None:
        self._replay = replay
        self._app_id = app_id
        self.run_trace: RunTrace | None = None  # set when the run is traced (`tracing`)

    # -- declaring ----------------------------------------------------------------------------

    def _declare(
        self, step_id: str, op: Opcode, name: str | None = None, opts: dict[str, Any] | None = None
    ) -> StepInfo:
        if not isinstance(step_id, str) or not step_id:
            raise self._invalid(None, f"a step id must be a non-empty string, not {step_id!r}")
        return self._replay.declare(step_id, op, name, opts, explicit_parallel.get())

    def _invalid(self, step_id: str | None, problem: str) -> InvalidStepError:
        """A step called with an argument no retry can fix. Recorded on the replay, so the
        request ends with it (and the run fails) even if the function catches it."""
        err = InvalidStepError(problem if step_id is None else f"step {step_id!r}: {problem}")
        self._replay.abort(err)
        return err

    def _timedelta(self, step_id: str, what: str, value: object) -> _dt.timedelta:
        try:
            return to_timedelta(value)  # type: ignore[arg-type]
        except (TypeError, ValueError) as err:
            raise self._invalid(step_id, f"{what} {value!r} is not a duration: {err}") from None

    def _name(self, step_id: str, what: str, value: object) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self._invalid(step_id, f"{what} must be a non-empty string, not {value!r}")
        return value

    def _run(self, step_id: str, handler: object) -> StepInfo:
        info = self._declare(step_id, Opcode.STEP_RUN)
        if not callable(handler):
            raise self._invalid(step_id, f"the handler {handler!r} is not callable")
        return info

    def _sleep(self, step_id: str, duration: DurationLike) -> StepInfo:
        until = _dt.datetime.now(_dt.UTC) + self._timedelta(step_id, "sleep duration", duration)
        return self._declare(step_id, Opcode.SLEEP, to_iso_utc(until))

    def _sleep_until(self, step_id: str, until: _dt.datetime) -> StepInfo:
        if not isinstance(until, _dt.datetime):
            raise self._invalid(step_id, f"sleep_until needs a datetime, not {until!r}")
        return self._declare(step_id, Opcode.SLEEP, to_iso_utc(until))

    def _wait_event(
        self, step_id: str, event: str, if_: str | None, timeout: DurationLike
    ) -> StepInfo:
        self._name(step_id, "the event to wait for", event)
        if "*" in event:
            raise self._invalid(step_id, f"wait_for_event cannot wait for a wildcard ({event!r})")
        if if_ is not None and (bad := expressions.problem(if_, expressions.EVENT_AND_ASYNC)):
            raise self._invalid(step_id, f"wait_for_event if_: {bad}")
        wait = format_duration(self._timedelta(step_id, "wait_for_event timeout", timeout))
        return self._declare(step_id, Opcode.WAIT_FOR_EVENT, event, {"if": if_, "timeout": wait})

    def _wait_signal(
        self, step_id: str, signal: str, timeout: DurationLike, on_conflict: str
    ) -> StepInfo:
        self._name(step_id, "the signal to wait for", signal)
        if on_conflict not in ("replace", "fail"):
            raise self._invalid(
                step_id, f"on_conflict must be 'replace' or 'fail', not {on_conflict!r}"
            )
        wait = format_duration(self._timedelta(step_id, "wait_for_signal timeout", timeout))
        opts = {"signal": signal, "timeout": wait, "conflict": on_conflict}
        return self._declare(step_id, Opcode.WAIT_FOR_SIGNAL, step_id, opts)

    def _invoke(
        self,
        step_id: str,
        function: Function[Any] | str,
        data: dict[str, Any] | None,
        timeout: DurationLike | None,
    ) -> StepInfo:
        if not isinstance(function, Function):
            self._name(step_id, "the function to invoke (a Function or its id)", function)
        if data is not None and not isinstance(data, dict):
            raise self._invalid(step_id, f"invoke data must be a dict, not {data!r}")
        fn_id = function if isinstance(function, str) else function.local_id
        limit = None
        if timeout is not None:
            limit = format_duration(self._timedelta(step_id, "invoke timeout", timeout))
        opts = {
            "function_id": f"{self._app_id}-{fn_id}",
            "payload": {"data": data, "v": None},
            "timeout": limit,
        }
        return self._declare(step_id, Opcode.INVOKE, step_id, opts)

    def _json(self, step_id: str, what: str, value: object) -> object:
        try:
            return _serialize.to_json_value(value, what=f"step {step_id!r}")
        except DurableError as err:
            raise self._invalid(step_id, f"{what} cannot be sent as JSON: {err}") from None

    def _ai_infer(
        self,
        step_id: str,
        url: str,
        body: object,
        auth_key: str | None,
        format: str,
        headers: dict[str, str] | None,
    ) -> StepInfo:
        for problem in (url_problem(url), headers_problem(headers)):
            if problem is not None:
                raise self._invalid(step_id, f"step.ai.infer {problem}")
        if auth_key is not None and not isinstance(auth_key, str):
            raise self._invalid(step_id, f"auth_key must be a string, not {type(auth_key)}")
        self._name(step_id, "format", format)
        opts = {
            "type": "step.ai.infer",
            "url": url,
            "headers": dict(headers or {}),
            "auth_key": auth_key or "",
            "format": format,
            "body": self._json(step_id, "the body", body),
        }
        return self._declare(step_id, Opcode.AI_GATEWAY, step_id, opts)

    def _fetch(
        self,
        step_id: str,
        url: str,
        method: str,
        headers: dict[str, str] | None,
        body: str | None,
        json_body: object,
    ) -> StepInfo:
        for problem in (url_problem(url), headers_problem(headers)):
            if problem is not None:
                raise self._invalid(step_id, f"step.fetch {problem}")
        if not isinstance(method, str) or method.upper() not in METHODS:
            raise self._invalid(step_id, f"method must be one of {', '.join(METHODS)}")
        sent = dict(headers or {})
        if json_body is not None:
            if body is not None:
                raise self._invalid(step_id, "step.fetch takes body= or json=, not both")
            body = json.dumps(self._json(step_id, "json", json_body), separators=(",", ":"))
            if not any(k.lower() == "content-type" for k in sent):
                sent["content-type"] = "application/json"
        if body is not None and not isinstance(body, str):
            raise self._invalid(step_id, f"body must be a string, not {type(body).__name__}")
        opts = {"url": url, "method": method.upper(), "headers": sent, "body": body}
        return self._declare(step_id, Opcode.GATEWAY, step_id, opts)

    def _events(self, step_id: str, events: Events) -> list[Event]:
        try:
            return as_events(events)
        except (TypeError, ValueError) as err:  # pydantic's ValidationError is a ValueError
            raise self._invalid(step_id, f"cannot send {events!r}: {err}") from None

    # -- reporting and running ----------------------------------------------------------------

    def _stopped(self, info: StepInfo, err: Exception) -> StopRequest:
        """A checkpoint failed: the store failed, the run has ended, or the request is past
        its deadline. The request ends with that error, recorded on the replay and raised as
        a StopRequest, so user code cannot catch it and go on without its steps stored. A
        checkpoint over HTTP that was not taken ends the request with no error: its answer
        carries the steps instead (`_http_checkpoint.HttpCheckpoints.answer`)."""
        if isinstance(err, CheckpointDeferred):
            self._replay.executing = None
            if self._replay.result is None:
                self._replay.result = Ops([])
            return StopRequest()
        if not isinstance(err, DurableError):
            err = CheckpointError(
                f"a step's result could not be stored when step {info.user_id!r} was reached: "
                f"{type(err).__name__}: {err}"
            )
        self._replay.abort(err)
        return StopRequest()

    def _report(self, info: StepInfo) -> Decision:
        """The engine's decision for a step reaching this point: its memo, run it, or park."""
        outer = _running_step.get()
        if outer is not None:
            # Recorded on the replay too, so user code that swallows it cannot hide it.
            raise self._replay.abort(
                NestedStepError(
                    f"step {info.user_id!r} was called inside step {outer.user_id!r}: steps cannot "
                    "be nested. Call it from the function body, after the outer step returns."
                )
            )
        return self._replay.report(info)

    def _execution(self, info: StepInfo, handler: Callable[..., Any] | None) -> Execution:
        """The step's turn to run has come."""
        if handler is None:
            raise RuntimeError(f"step {info.user_id!r} cannot be executed in place")
        return Execution(self._replay, info, self.run_trace)

    # -- restoring ----------------------------------------------------------------------------

    @staticmethod
    def _restore(memo: Memo, tp: Any, info: StepInfo) -> Any:
        if memo.error is not None:
            raise memo.error
        return _serialize.from_json_value(memo.data, tp, what=f"step {info.user_id!r}")

    @staticmethod
    def _restore_event(memo: Memo) -> Event | None:
        if memo.error is not None:  # the orchestrator could not keep the wait (a bad `if`)
            raise memo.error
        return None if memo.data is None else Event.model_validate(memo.data)

    @staticmethod
    def _restore_signal(memo: Memo) -> Signal | None:
        if memo.error is not None:  # SignalConflict: another run holds the name
            raise memo.error
        return None if memo.data is None else Signal.model_validate(memo.data)

    @staticmethod
    def _restore_fetch(memo: Memo) -> FetchResponse:
        if memo.error is not None:  # retries ran out, or the request could not be made
            raise memo.error
        return FetchResponse.from_json(memo.data)

    @staticmethod
    def _restore_ai(memo: Memo) -> Any:
        if memo.error is not None:  # the model refused the request, or retries ran out
            raise memo.error
        return memo.data

    @staticmethod
    def _invoke_type(function: Function[Any] | str) -> Any:
        return None if isinstance(function, str) else function.output_type
