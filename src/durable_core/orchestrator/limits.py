"""A run's limits as the orchestrator enforces them (`_limits.py` defines them).

The orchestrator's own limits are the defaults of every function; a function's config may
carry `limits: {"stepOutput", "runOutputTotal", "steps"}` (bytes, bytes, steps) of its own.
Before an answer's outputs are stored, `over_limit` finds the first one that goes over; the
run then fails at once. Errors are not refused (that would hide them): `clip_error` cuts their
text to `ERROR_TEXT_MAX` characters before they are stored. In-process steps are checked one by one as they are checkpointed
(`checkpoints.StepBuffer`), and HTTP answers are read only up to `RunLimits.answer_bound`
(`transport.HttpTransport`), so no answer costs more memory than the limits allow.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .._limits import Budget, RunLimits, Usage, json_size
from ..errors import LimitExceededError, RunErrorName, run_error
from ..protocol import Opcode
from .store import FunctionRecord
from .transport import CallResult

#: The most characters of an error's message, and of its stack, that are stored.
ERROR_TEXT_MAX = 16 * 1024

#: The fields of a function config's `limits`, and the limits they set.
WIRE_FIELDS = {"stepOutput": "step_output", "runOutputTotal": "run_output_total", "steps": "steps"}


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def for_function(fn: FunctionRecord | None, defaults: RunLimits) -> RunLimits:
    """The limits of `fn`'s runs: its own where it sets them, else `defaults`."""
    own = fn.config.get("limits") if fn is not None else None
    if not isinstance(own, dict):
        return defaults
    values = {field: own.get(key) for key, field in WIRE_FIELDS.items()}
    return defaults.replace(**{k: v for k, v in values.items() if _positive(v)})


def check(config: dict[str, Any]) -> str | None:
    """What is wrong with a function config's `limits` (None if nothing), for a 400."""
    own = config.get("limits")
    if own is None:
        return None
    if not isinstance(own, dict):
        return "limits must be an object"
    for key in own:
        if key not in WIRE_FIELDS:
            return f"limits.{key} is not a limit (known: {', '.join(WIRE_FIELDS)})"
        if own[key] is not None and not _positive(own[key]):
            return f"limits.{key} must be a positive integer"
    return None


def _clip(text: str) -> str:
    if len(text) <= ERROR_TEXT_MAX:
        return text
    return f"{text[:ERROR_TEXT_MAX]}... ({len(text) - ERROR_TEXT_MAX} more characters cut)"


def clip_error(error: Any) -> Any:
    """An error as it is stored: its message and stack cut to `ERROR_TEXT_MAX` characters, and
    only its name, message and stack when it carries more than that."""
    if not isinstance(error, dict):
        return error if error is None else _clip(str(error))
    clipped = {k: _clip(v) if isinstance(v, str) else v for k, v in error.items()}
    if json_size(clipped) > 4 * ERROR_TEXT_MAX:
        clipped = {k: clipped.get(k) for k in ("name", "message", "stack")}
        clipped = {
            k: v if isinstance(v, str) or v is None else _clip(str(v)) for k, v in clipped.items()
        }
    return clipped


def run_error_of(err: LimitExceededError) -> dict[str, Any]:
    return run_error(RunErrorName.LIMIT_EXCEEDED, str(err))


@dataclasses.dataclass(frozen=True, slots=True)
class Overrun:
    """What in an answer went over a limit: the op (None: the answer as a whole) and why."""

    op: dict[str, Any] | None
    error: dict[str, Any]


def over_limit(res: CallResult, limits: RunLimits, usage: Usage) -> Overrun | None:
    """The first thing in `res` that goes over `limits`, given what the run has `usage`d."""
    budget = Budget(limits, dataclasses.replace(usage))
    try:
        if res.too_large and res.status in (200, 206):  # an error page: retried as an error
            raise limits.answer_too_large()
        if res.status == 200:
            budget.output("the output of the function", res.body)
        elif res.status == 206 and isinstance(res.body, list):
            return _ops(budget, res.body)
    except LimitExceededError as err:
        return Overrun(None, run_error_of(err))
    return None


def _ops(budget: Budget, ops: list[Any]) -> Overrun | None:
    for op in ops:
        if not isinstance(op, dict):
            continue
        kind, name = op.get("op"), op.get("displayName") or op.get("name") or op.get("id")
        try:
            if kind == Opcode.RUN_COMPLETE:
                budget.output("the output of the function", op.get("data"))
                continue
            if kind == Opcode.STEP_RUN:
                budget.store(f"the output of step {name!r}", op.get("data"))
            elif kind not in (Opcode.STEP_ERROR, Opcode.STEP_FAILED):  # errors are clipped
                budget.output(f"the options of step {name!r}", op.get("opts"))
            if kind != Opcode.STEP_ERROR:  # every other op leaves a result or a pending step
                budget.add_steps(1)
        except LimitExceededError as err:
            return Overrun(op, run_error_of(err))
    return None
