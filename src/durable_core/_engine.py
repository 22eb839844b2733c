"""The replay engine: pure logic over stored memos and reported steps, no I/O.

One request replays the function from the top. Each step call is *declared* (its id hashed,
with a counter for reused ids) and then *reported*. The engine answers every report with a
decision:

- ``Memo``: the step ran in an earlier request; here is its stored result.
- ``Execute``: run the step's handler now and hand the result back (`complete` / `fail`).
- ``Park``: new work that this request does not run; the caller suspends the step.

New steps are collected until the caller says the function has *settled* (sync code: at
once; async code: when its tasks stop reporting). `settle` then either picks the single new
`step.run` to execute in this request or ends the request with the discovered ops
(`StepPlanned` for runs found together, plus sleeps, waits and invokes).

The step lifecycle (`_lifecycle.py`), the sync and async step frontends (`_steps.py`) and
the drivers (`_driver.py`) only differ in how they wait; every rule of the protocol lives
here. Running several steps in one request (checkpointing) fits here too: `complete` returns
the memo to continue with instead of ending the request.

The run's limits (`_limits.Budget`) are checked here too: a step's output before it is
reported or checkpointed, and the step count before new steps run or are reported.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Mapping
from typing import Any

from ._limits import Budget
from .errors import (
    DurableError,
    LimitExceededError,
    NonDeterminismError,
    StepError,
    error_payload,
)
from .protocol import Opcode
from .types import JSONObject


def hash_step_id(step_id: str) -> str:
    return hashlib.sha1(step_id.encode()).hexdigest()


@dataclasses.dataclass(slots=True)
class StepInfo:
    """One step call: the user's id, its hashed id and counter, and the op it reports."""

    user_id: str
    hashed: str
    index: int | None
    op: Opcode
    name: str
    opts: dict[str, Any] | None = None
    in_parallel: bool = False

    def to_op(self, op: Opcode | None = None, **extra: Any) -> JSONObject:
        wire: JSONObject = {
            "id": self.hashed,
            "op": (op or self.op).value,
            "name": self.name,
            "displayName": self.user_id,
            "opts": self.opts,
            "userland": {"id": self.user_id, "index": self.index},
            "data": None,
        }
        wire.update(extra)
        return wire


@dataclasses.dataclass(frozen=True, slots=True)
class Memo:
    data: Any = None
    error: StepError | None = None


class _Decision(enum.Enum):
    EXECUTE = "execute"
    PARK = "park"


EXECUTE = _Decision.EXECUTE
PARK = _Decision.PARK
Decision = Memo | _Decision


@dataclasses.dataclass(frozen=True, slots=True)
class Ops:
    """The request ends with these opcodes (HTTP 206)."""

    ops: list[JSONObject]


def _parse_memo(raw: object) -> Memo:
    # run and invoke memos nest under "data"/"error"; sleep and wait memos are the bare value.
    if isinstance(raw, dict) and raw and set(raw) <= {"data", "error"}:
        err = raw.get("error")
        if isinstance(err, dict):
            return Memo(
                error=StepError(
                    str(err.get("message", "")),
                    str(err.get("name", "Error")),
                    err.get("stack") if isinstance(err.get("stack"), str) else None,
                )
            )
        return Memo(data=raw.get("data"))
    return Memo(data=raw)


class Replay:
    """The state of one request's replay."""

    def __init__(
        self,
        steps: Mapping[str, object],
        *,
        target: str | None = None,
        attempt: int = 0,
        max_attempts: int = 5,
        disable_immediate_execution: bool = False,
        checkpoint: bool = False,
        budget: Budget | None = None,
    ) -> None:
        self._raw_memos = steps
        self._unseen = set(steps)
        self._counts: dict[str, int] = {}
        self.target = target
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.disable_immediate_execution = disable_immediate_execution
        self.checkpoint = checkpoint and target is None
        self.budget = budget if budget is not None else Budget()
        self.pending: list[StepInfo] = []
        self.executing: StepInfo | None = None
        self.result: Ops | DurableError | None = None
        self.reports = 0
        self._new_work = False

    # -- declaring and reporting -------------------------------------------------------

    def declare(
        self,
        user_id: str,
        op: Opcode,
        name: str | None = None,
        opts: dict[str, Any] | None = None,
        in_parallel: bool = False,
    ) -> StepInfo:
        if not isinstance(user_id, str) or not user_id:
            raise TypeError(f"a step id must be a non-empty string, not {user_id!r}")
        n = self._counts.get(user_id, 0)
        self._counts[user_id] = n + 1
        pre = user_id if n == 0 else f"{user_id}:{n}"
        return StepInfo(
            user_id=user_id,
            hashed=hash_step_id(pre),
            index=n if n else None,
            op=op,
            name=user_id if name is None else name,
            opts=opts,
            in_parallel=in_parallel,
        )

    def report(self, info: StepInfo) -> Decision:
        self.reports += 1
        if info.hashed in self._raw_memos:
            self._unseen.discard(info.hashed)
            return _parse_memo(self._raw_memos[info.hashed])
        self._new_work = True
        if self.result is not None or self.executing is not None:
            return PARK
        if self.target is not None:
            if info.hashed == self.target:
                if info.op is not Opcode.STEP_RUN:
                    self.result = Ops([info.to_op()])
                    return PARK
                self.executing = info
                return EXECUTE
            self.pending.append(info)  # skipped; if the target never comes, settle() says so
            return PARK
        self.pending.append(info)
        return PARK

    @property
    def unseen_memos(self) -> int:
        return len(self._unseen)

    @property
    def replaying(self) -> bool:
        """True while the function is still re-running code whose steps are all stored."""
        return bool(self._unseen) and not self._new_work

    # -- ending the request --------------------------------------------------------------

    def settle(self) -> StepInfo | Ops | DurableError:
        """Decide what this request does with the new steps found so far.

        Returns the step to execute now, or the final result of the request.
        """
        if self.result is not None:
            return self.result
        if self.executing is not None:
            return self.executing
        if self.target is not None:
            self.result = NonDeterminismError(
                f"the orchestrator asked to run step {self.target} but replay did not reach it; "
                "the function must call the same steps in the same order on every replay "
                "(keep randomness, clocks and I/O inside steps)"
            )
            return self.result
        pending = self.pending
        if not pending:
            raise RuntimeError("settle() called with no new steps")
        if self._unseen:
            names = ", ".join(repr(info.user_id) for info in pending)
            self.result = NonDeterminismError(
                f"replay diverged: the function reached new step(s) {names} while "
                f"{len(self._unseen)} stored step(s) of this run were never reached. The code "
                "changed under a run in flight, or it branches on something outside a step "
                "(time, randomness, I/O). Keep step ids and order stable for running runs, and "
                "move non-deterministic code into steps."
            )
            return self.result
        try:
            self.budget.add_steps(len(pending))
        except LimitExceededError as err:
            self.result = err
            return err
        if (
            len(pending) == 1
            and pending[0].op is Opcode.STEP_RUN
            and not pending[0].in_parallel
            and not self.disable_immediate_execution
        ):
            self.executing = pending[0]
            self.pending = []
            return self.executing
        ops = [
            info.to_op(Opcode.STEP_PLANNED) if info.op is Opcode.STEP_RUN else info.to_op()
            for info in pending
        ]
        self.result = Ops(ops)
        return self.result

    def complete(self, info: StepInfo, output: object) -> Ops | Memo | DurableError:
        """The executing step returned `output` (already JSON-compatible).

        Without checkpointing the request ends with its StepRun op. With it, the caller stores
        the op durably and the function goes on with the result as a memo.
        """
        self.executing = None
        if isinstance(self.result, DurableError):
            return self.result  # aborted while the step ran (a nested step): that error stands
        try:
            self.budget.store(f"the output of step {info.user_id!r}", output)
        except LimitExceededError as err:
            self.result = err
            return err
        if self.checkpoint:
            self.attempt = 0  # attempts count per step: the next step starts afresh
            return Memo(data=output)
        self.result = Ops([info.to_op(Opcode.STEP_RUN, data=output)])
        return self.result

    def abort(self, err: DurableError) -> DurableError:
        """A step raised an error that decides the whole run (non-retriable, retry after).

        The request ends with it even if the function catches it: these errors are control
        flow for the run, like the interrupts, not values for the function to handle.
        """
        self.executing = None
        if self.result is None:
            self.result = err
        return err

    def fail(self, info: StepInfo, err: BaseException) -> Ops | DurableError:
        """The executing step raised a retriable error: StepError, or StepFailed when spent."""
        self.executing = None
        if isinstance(self.result, DurableError):
            return self.result
        spent = self.attempt + 1 >= self.max_attempts
        op = Opcode.STEP_FAILED if spent else Opcode.STEP_ERROR
        self.result = Ops([info.to_op(op, error=error_payload(err))])
        return self.result

    def unreached_target(self) -> NonDeterminismError | None:
        """When the function ended: an error if a targeted step was never reached."""
        if self.target is not None and self.result is None and self.executing is None:
            return NonDeterminismError(
                f"the orchestrator asked to run step {self.target} but the function returned "
                "without reaching it; the function must call the same steps on every replay"
            )
        return None
