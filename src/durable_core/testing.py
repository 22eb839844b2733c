"""Run durable functions in tests, without an orchestrator and without real sleeping.

`run` (async) and `run_sync` play the orchestrator in memory: they call the function request
after request, store each step's result, deliver stubbed events, signals and child outputs,
and retry failures at once. Example, in a pytest test::

    from durable_core.testing import run

    async def test_order_is_charged_and_confirmed() -> None:
        result = await run(
            process_order,
            event={"name": "shop/order", "data": {"order_id": "o1"}},
            waits={"wait-approval": {"name": "shop/approved", "data": {"by": "ann"}}},
            steps={"charge": {"id": "ch_1"}},  # stubbed: the step's handler does not run
        )
        assert result.status == "completed"
        assert result.output == {"order_id": "o1", "charge": "ch_1"}
        assert [e.name for e in result.sent_events] == ["shop/order.confirmed"]

Stubs are keyed by step id (or `"<id>:<n>"` for the n+1-th use of a reused id). A value of None
in `waits` or `signals` means the wait timed out. `responses` answers `step.ai.infer` (the
model's JSON) and `step.fetch` (a `FetchResponse`). A step, invoke or response stub may be an
exception instance: the step then fails for good and the function sees a `StepError`. Invoked functions
of the same app run as children with the same stubs; an `on_failure` handler runs when the
function fails for good (its result is `RunResult.on_failure`).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
from collections.abc import Generator, Mapping
from typing import Any, Literal, TypedDict, Unpack

import pydantic

from ._driver import Outcome
from ._durations import to_timedelta
from ._engine import Ops
from ._execute import ExecutionRequest, execute, execute_blocking, to_wire
from ._serialize import to_json_value
from .errors import HarnessError, error_payload
from .events import Event
from .function import Function
from .options import TriggerCron
from .protocol import Header, Opcode, SystemEvent, execution_request
from .types import Handler

Stubs = Mapping[str, Any]
EventLike = Event | Mapping[str, Any]


@dataclasses.dataclass(slots=True)
class StepRecord:
    """One finished step. `op` is StepRun, StepFailed, Sleep, WaitForEvent, WaitForSignal or
    InvokeFunction; `output` is the stored result in JSON form (None for sleeps and timeouts)."""

    id: str
    op: str
    attempts: int = 1
    output: Any = None
    error: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # retried attempts
    stubbed: bool = False
    child: RunResult | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class SleepRecord:
    id: str
    until: _dt.datetime


@dataclasses.dataclass(slots=True)
class RunResult:
    """How a run ended. `sent_events` includes the events of invoked children."""

    status: Literal["completed", "failed"]
    output: Any
    error: dict[str, Any] | None
    steps: list[StepRecord]
    sent_events: list[Event]
    sleeps: list[SleepRecord]
    requests: int
    run_id: str
    on_failure: RunResult | None = None

    def step(self, step_id: str) -> StepRecord:
        """The first finished step with this id."""
        for record in self.steps:
            if record.id == step_id:
                return record
        raise KeyError(f"no step {step_id!r} finished; steps: {[r.id for r in self.steps]}")


@dataclasses.dataclass(frozen=True, slots=True)
class _Stubs:
    waits: Stubs
    signals: Stubs
    invokes: Stubs
    steps: Stubs
    responses: Stubs


def _lookup(table: Stubs, op: dict[str, Any]) -> tuple[bool, Any]:
    uid, index = op["userland"]["id"], op["userland"].get("index")
    for key in ((f"{uid}:{index}",) if index else ()) + (uid,):
        if key in table:
            return True, table[key]
    return False, None


def _stub_memo(value: object, what: str) -> dict[str, Any]:
    if isinstance(value, BaseException):
        return {"error": error_payload(value)}
    return {"data": to_json_value(value, what=what)}


def _default_event(fn: Function[Any]) -> Event:
    trigger = fn.options.triggers[0]
    if isinstance(trigger, TriggerCron):
        return Event(name=SystemEvent.SCHEDULED_TIMER, data={"cron": trigger.cron})
    return Event(name=trigger.event)


class _Run:
    """The in-memory orchestrator state of one run: sans-IO, driven through `_plan`."""

    def __init__(
        self, fn: Function[Any], handler: Handler, event: Event, run_id: str, stubs: _Stubs,
        max_requests: int,
    ) -> None:  # fmt: skip
        self.fn, self.handler, self.event, self.run_id = fn, handler, event, run_id
        self.stubs, self.max_requests = stubs, max_requests
        self.max_attempts = fn.attempts_of(handler)
        self.memos: dict[str, Any] = {}
        self.records: list[StepRecord] = []
        self.sleeps: list[SleepRecord] = []
        self.sent: list[Event] = []
        self.tries: dict[str, list[dict[str, Any]]] = {}
        self.planned: list[str] = []
        self.retry: tuple[str | None, int, bool] | None = None
        self.after_batch = False
        self.last: tuple[str | None, int, bool] = (None, 0, False)
        self.requests = 0
        self.final: RunResult | None = None

    # -- requests ---------------------------------------------------------------------------

    def next_request(self) -> tuple[ExecutionRequest, str | None] | None:
        if self.final is not None:
            return None
        if self.requests >= self.max_requests:
            raise HarnessError(
                f"function {self.fn.id!r} did not finish within {self.max_requests} requests; "
                "it may never end (a loop that creates new steps forever). Pass a larger "
                "max_requests= if it really needs more."
            )
        if self.retry is not None:
            self.last, self.retry = self.retry, None
        elif self.planned:
            self.last = (self.planned.pop(0), 0, False)
        else:
            self.last = (None, 0, self.after_batch or bool(self.stubs.steps))
            self.after_batch = False
        target, attempt, flag = self.last
        self.requests += 1
        body = execution_request(
            run_id=self.run_id, fn_id=self.fn.id, events=[self.event.to_wire()],
            memos=copy.deepcopy(self.memos), attempt=attempt, max_attempts=self.max_attempts,
            disable_immediate_execution=flag,
        )  # fmt: skip
        return ExecutionRequest.model_validate(body), target

    def send(self, events: list[Event]) -> list[str]:
        ids = []
        for event in events:
            self.sent.append(event)
            ids.append(event.id or f"{self.run_id}-event-{len(self.sent)}")
        return ids

    async def send_async(self, events: list[Event]) -> list[str]:
        return self.send(events)

    # -- outcomes ---------------------------------------------------------------------------

    def absorb(self, outcome: Outcome) -> list[tuple[dict[str, Any], _Run]]:
        """Apply one request's outcome; returns the child runs that invokes need."""
        target, attempt, flag = self.last
        if not isinstance(outcome, Ops):
            wire = to_wire(self.fn, outcome)
            if wire.status == 200:
                self.final = self._result("completed", wire.body, None)
            elif Header.NO_RETRY in wire.headers or attempt + 1 >= self.max_attempts:
                self.final = self._result("failed", None, wire.body)
            else:
                self.retry = (target, attempt + 1, flag)
            return []
        children = []
        for op in outcome.ops:
            child = self._apply(op)
            if child is not None:
                children.append((op, child))
        return children

    def _apply(self, op: dict[str, Any]) -> _Run | None:
        kind, uid, opts = op["op"], op["userland"]["id"], op.get("opts") or {}
        if kind == Opcode.STEP_RUN:
            self._memo(op, {"data": op.get("data")}, op.get("data"))
        elif kind == Opcode.STEP_ERROR:
            self.tries.setdefault(op["id"], []).append(op["error"])
            target, attempt, flag = self.last
            self.retry = (target, attempt + 1, flag)
        elif kind == Opcode.STEP_FAILED:
            self._memo(op, {"error": op["error"]}, None, op["error"])
        elif kind == Opcode.STEP_PLANNED:
            self.after_batch = True
            found, stub = _lookup(self.stubs.steps, op)
            if found:
                memo = _stub_memo(stub, f"the stub of step {uid!r}")
                kind = Opcode.STEP_FAILED if "error" in memo else Opcode.STEP_RUN
                self._memo(op, memo, memo.get("data"), memo.get("error"), kind=kind, stubbed=True)
            elif op["id"] not in self.planned:
                self.planned.append(op["id"])
        elif kind == Opcode.SLEEP:
            duration = opts.get("duration")
            until = (
                _dt.datetime.now(_dt.UTC) + to_timedelta(duration)
                if duration
                else _dt.datetime.fromisoformat(op["name"])
            )
            self.sleeps.append(SleepRecord(uid, until))
            self._memo(op, None)
        elif kind == Opcode.WAIT_FOR_EVENT:
            name = opts.get("event") or op["name"]
            stub = self._required(self.stubs.waits, op, "waits", f"waits for event {name!r}")
            delivered = None if stub is None else self._event(uid, name, stub).to_wire()
            self._memo(op, delivered, delivered)
        elif kind == Opcode.WAIT_FOR_SIGNAL:
            what = f"waits for signal {opts.get('signal')!r}"
            stub = self._required(self.stubs.signals, op, "signals", what)
            data = to_json_value(stub, what=f"the stub of signal step {uid!r}")
            delivered = None if stub is None else {"signal": opts.get("signal"), "data": data}
            self._memo(op, delivered, delivered)
        elif kind == Opcode.INVOKE:
            return self._invoke(op, uid, opts)
        elif kind in (Opcode.AI_GATEWAY, Opcode.GATEWAY):
            found, stub = _lookup(self.stubs.responses, op)
            if not found or stub is None:
                raise HarnessError(
                    f"step {uid!r} requests {opts.get('url')} but no answer was given: pass "
                    f"responses={{{uid!r}: ...}} (the model's JSON, a FetchResponse, or an error)"
                )
            memo = _stub_memo(stub, f"the stub of step {uid!r}")
            self._memo(op, memo, memo.get("data"), memo.get("error"), stubbed=True)
        else:
            raise HarnessError(f"step {uid!r} reported an unknown opcode {kind!r}")
        return None

    def _required(self, table: Stubs, op: dict[str, Any], arg: str, what: str) -> Any:
        found, stub = _lookup(table, op)
        if not found:
            uid = op["userland"]["id"]
            raise HarnessError(
                f"step {uid!r} {what} but no stub was given: pass {arg}={{{uid!r}: ...}} to "
                f"deliver one, or {arg}={{{uid!r}: None}} for a timeout"
            )
        return stub

    @staticmethod
    def _event(uid: str, name: str, stub: object) -> Event:
        try:
            if isinstance(stub, Mapping):
                stub = Event.model_validate({"name": name, **stub})
            event = stub if isinstance(stub, Event) else Event.model_validate(stub)
        except pydantic.ValidationError as err:
            raise HarnessError(f"waits[{uid!r}] is not a valid event: {err}") from None
        if event.name != name:
            raise HarnessError(
                f"waits[{uid!r}] is an event named {event.name!r}, but step {uid!r} waits for "
                f"{name!r}: the orchestrator would never deliver it"
            )
        return event

    def _invoke(self, op: dict[str, Any], uid: str, opts: dict[str, Any]) -> _Run | None:
        found, stub = _lookup(self.stubs.invokes, op)
        if found:
            memo = _stub_memo(stub, f"the stub of invoke step {uid!r}")
            self._memo(op, memo, memo.get("data"), memo.get("error"), stubbed=True)
            return None
        fn_id = str(opts.get("function_id"))
        target = self.fn.app.find(fn_id)
        if target is None:
            raise HarnessError(
                f"step {uid!r} invokes {fn_id!r}, which is not a function of app "
                f"{self.fn.app.app_id!r}: pass invokes={{{uid!r}: <its output>}} to stub it"
            )
        data = (opts.get("payload") or {}).get("data") or {}
        event = Event(name=SystemEvent.FUNCTION_INVOKED, data=data)
        return _Run(*target, event, f"{self.run_id}-{uid}", self.stubs, self.max_requests)

    def adopt(self, op: dict[str, Any], child: RunResult) -> None:
        """An invoked child run ended: store its output or error as the invoke step's result."""
        self.sent.extend(child.sent_events)
        memo = {"data": child.output} if child.error is None else {"error": child.error}
        self._memo(op, memo, child.output, child.error, child=child)

    def _memo(
        self, op: dict[str, Any], memo: Any, output: Any = None, error: Any = None, *,
        kind: str | None = None, stubbed: bool = False, child: RunResult | None = None,
    ) -> None:  # fmt: skip
        """Store a step's result for the next requests, and record it."""
        self.memos[op["id"]] = memo
        errors = self.tries.pop(op["id"], [])
        uid, op_name = op["userland"]["id"], str(kind or op["op"])
        record = StepRecord(uid, op_name, len(errors) + 1, output, error, errors, stubbed, child)
        self.records.append(record)

    def _result(self, status: Literal["completed", "failed"], output: Any, error: Any) -> RunResult:
        return RunResult(
            status, output, error, self.records, self.sent, self.sleeps, self.requests, self.run_id
        )

    def failure_run(self) -> _Run | None:
        """The run of the function's `on_failure` handler, when it failed for good."""
        final = self.final
        if final is None or final.status != "failed" or self.handler is not self.fn.handler:
            return None
        if self.fn.on_failure is None:
            return None
        data = {
            "function_id": self.fn.id, "run_id": self.run_id, "error": final.error,
            "event": self.event.to_wire(),
        }  # fmt: skip
        event = Event(name=SystemEvent.FUNCTION_FAILED, data=data)
        return _Run(
            self.fn, self.fn.on_failure, event, f"{self.run_id}-failure", self.stubs,
            self.max_requests,
        )  # fmt: skip


def _plan(state: _Run) -> Generator[tuple[_Run, ExecutionRequest, str | None], Outcome, RunResult]:
    """Yields every request of the run (and of its children) and receives its outcome."""
    while (request := state.next_request()) is not None:
        outcome = yield (state, *request)
        for op, child in state.absorb(outcome):
            state.adopt(op, (yield from _plan(child)))
    assert state.final is not None
    failure = state.failure_run()
    if failure is not None:
        state.final.on_failure = yield from _plan(failure)
    return state.final


class RunOptions(TypedDict, total=False):
    """What `run` and `run_sync` take besides the function: the triggering event (default: its
    first trigger's), stubs for waits, signals, invokes and steps, and the harness's limits."""

    event: EventLike | None
    waits: Stubs | None
    signals: Stubs | None
    invokes: Stubs | None
    steps: Stubs | None
    responses: Stubs | None
    max_requests: int
    run_id: str


def _start(fn: Function[Any], options: RunOptions) -> _Run:
    if not isinstance(fn, Function):
        raise TypeError(f"run() needs a durable function (made with @app.function), not {fn!r}")
    event = options.get("event")
    if event is None:
        ev = _default_event(fn)
    else:
        ev = event if isinstance(event, Event) else Event.model_validate(dict(event))
    stubs = _Stubs(
        options.get("waits") or {},
        options.get("signals") or {},
        options.get("invokes") or {},
        options.get("steps") or {},
        options.get("responses") or {},
    )
    max_requests = options.get("max_requests", 1000)
    return _Run(fn, fn.handler, ev, options.get("run_id", "test-run"), stubs, max_requests)


class _Requests:
    """The requests of one test run, one at a time: `next()` gives the one to execute (None
    once the run has ended, with `result` set), `answer()` takes its outcome."""

    def __init__(self, fn: Function[Any], options: RunOptions) -> None:
        self._plan = _plan(_start(fn, options))
        self._outcome: Outcome | None = None
        self.result: RunResult | None = None

    def next(self) -> tuple[_Run, ExecutionRequest, str | None] | None:
        try:
            if self._outcome is None:
                return next(self._plan)
            return self._plan.send(self._outcome)
        except StopIteration as stop:
            self.result = stop.value
            return None

    def answer(self, outcome: Outcome) -> None:
        self._outcome = outcome

    def done(self) -> RunResult:
        assert self.result is not None
        return self.result


async def run(fn: Function[Any], **options: Unpack[RunOptions]) -> RunResult:
    """Run `fn` (sync or async) for `event` to its end; `event` defaults to its first trigger."""
    requests = _Requests(fn, options)
    while (request := requests.next()) is not None:
        s, req, target = request
        out = await execute(s.fn, s.handler, req, target, sender=s.send_async, sync_sender=s.send)
        requests.answer(out)
    return requests.done()


def run_sync(fn: Function[Any], **options: Unpack[RunOptions]) -> RunResult:
    """`run` for code without an event loop; async functions get a loop of their own."""
    requests = _Requests(fn, options)
    while (request := requests.next()) is not None:
        s, req, target = request
        args = (s.fn, s.handler, req, target)
        requests.answer(execute_blocking(*args, sender=s.send_async, sync_sender=s.send))
    return requests.done()


__all__ = [
    "HarnessError",
    "RunOptions",
    "RunResult",
    "SleepRecord",
    "StepRecord",
    "run",
    "run_sync",
]
