"""One log line per change of a run's state, at INFO on the `durable.runs` logger.

    run 01JD... of shop-process-order started
    run 01JD... of shop-process-order: step 'charge card' done
    run 01JD... of shop-process-order: step 'charge card' failed (attempt 1): boom; retrying at 2026-...
    run 01JD... of shop-process-order: sleeping in step 'cool off' until 2026-...
    run 01JD... of shop-process-order: waiting in step 'approval' for event 'shop/order.approved' until 2026-...
    run 01JD... of shop-process-order completed
    run 01JD... of shop-process-order failed: ValueError: boom
    run 01JD... of shop-process-order cancelled: cancelled through the API

A unit of work notes its changes in its effects (`note`); the dispatcher writes them once the
unit has committed (`write`), so a unit tried again or rolled back logs nothing. Each record
carries its fields in `record.durable` (`event`, `run_id`, `function_id`, `step`, ...), which the
JSON format (`durable_core.logs`) prints as keys. With INFO disabled on `durable.runs`, noting
is one `isEnabledFor` call.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
from typing import Any

log = logging.getLogger("durable.runs")
_MOMENTS = ("retry_at", "until")  # given in ms since the epoch, written as ISO 8601


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    #: started, step_done, step_failed, retrying, sleeping, waiting, completed, failed, cancelled
    event: str
    run_id: str
    fn_id: str
    step: str | None = None
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)

    def message(self, fields: dict[str, Any] | None = None) -> str:
        """The line; `fields` is `as_dict()`, when already made."""
        head = f"run {self.run_id} of {self.fn_id}"
        f = fields if fields is not None else self.as_dict()
        step = f"step {self.step!r}"
        match self.event:
            case "started":
                return f"{head} started"
            case "step_done":
                return f"{head}: {step} done"
            case "step_failed":
                return f"{head}: {step} failed: {f.get('error', '')}"
            case "retrying":
                return (
                    f"{head}: {step} failed (attempt {f.get('attempt')}): {f.get('error', '')}; "
                    f"retrying at {f.get('retry_at')}"
                )
            case "sleeping":
                return f"{head}: sleeping in {step} until {f.get('until')}"
            case "waiting":
                until = f" until {f['until']}" if f.get("until") else ""
                return f"{head}: waiting in {step} for {f.get('waiting_for')}{until}"
            case "failed":
                return f"{head} failed: {f.get('error', '')}"
            case "cancelled":
                return f"{head} cancelled: {f.get('reason') or ''}".rstrip(": ")
            case _:
                return f"{head} {self.event}"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "event": self.event,
            "run_id": self.run_id,
            "function_id": self.fn_id,
        }
        if self.step is not None:
            out["step"] = self.step
        for key, value in self.fields.items():
            if value is None:
                continue
            if key in _MOMENTS and isinstance(value, int):
                value = iso(value)
            elif key == "error":
                value = error_text(value)
            out[key] = value
        return out


def enabled() -> bool:
    return log.isEnabledFor(logging.INFO)


def iso(ms: int) -> str:
    return _dt.datetime.fromtimestamp(ms / 1000, _dt.UTC).isoformat(timespec="milliseconds")


def error_text(error: Any) -> str:
    """`Name: message` of a stored error."""
    if isinstance(error, str):
        return error[:500]
    if not isinstance(error, dict):
        return str(error)[:500]
    name, message = error.get("name") or "Error", str(error.get("message") or "")
    return f"{name}: {message[:500]}"


def note(
    changes: list[Change],
    event: str,
    run_id: str,
    fn_id: str,
    step: str | None = None,
    **fields: Any,
) -> None:
    """Note a change, to be written after the unit commits (nothing when INFO is off)."""
    if log.isEnabledFor(logging.INFO):
        changes.append(Change(event, run_id, fn_id, step, fields))


def write(changes: list[Change]) -> None:
    for change in changes:
        fields = change.as_dict()
        log.info("%s", change.message(fields), extra={"durable": fields})


def tell(event: str, run_id: str, fn_id: str, step: str | None = None, **fields: Any) -> None:
    """Write a change made outside a unit (a step checkpointed on its own) at once."""
    if log.isEnabledFor(logging.INFO):
        write([Change(event, run_id, fn_id, step, fields)])
