"""Rerun a run, from the start or from a chosen step.

A rerun from step S is a new run, on the same event, that starts with the results of the steps
*before* S already stored: the steps whose memos the old run stored before S's, in the order
memos were stored (their `seq`). S itself and every step stored after it run again, unless an
`output` is given for S: then S is stored with that output (`{"data": output}`) and only the
steps after it run. A step is named by its id or by its name (the last attempt of that name);
a step the old run never finished (no memo) counts as stored after every finished one, so each
finished step is kept. Steps that ran in parallel with S but finished before it are kept too:
"before" is the order of storing, not of starting.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from . import lifecycle
from .store import FunctionRecord, HistoryRecord, RunRecord, now_ms
from .unit import Unit

__all__ = ["NO_OUTPUT", "UnknownStep", "rerun"]

#: No replacement output for the chosen step (it runs again).
NO_OUTPUT: Any = object()


class UnknownStep(ValueError):
    """The run has no step with the given id or name."""


def _resolve(wanted: str, memos: dict[str, Any], history: list[HistoryRecord]) -> str:
    if wanted in memos or any(h.step == wanted for h in history):
        return wanted
    named = [h.step for h in history if h.name == wanted]
    if named:
        return named[-1]
    known = sorted({h.name for h in history}) or ["none"]
    shown = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
    raise UnknownStep(f"run has no step {wanted!r} (its steps: {shown})")


async def rerun(
    unit: Unit,
    run: RunRecord,
    fn: FunctionRecord,
    from_step: str | None = None,
    output: Any = NO_OUTPUT,
) -> str:
    """Start the new run; its id. Raises UnknownStep for a step the run does not have."""
    if from_step is None:
        return await lifecycle.start_run(unit, fn, run.events)
    memos = await unit.tx.get_memos(run.run_id)
    history = await unit.tx.get_history(run.run_id)
    chosen = _resolve(from_step, memos, history)
    kept: list[str] = []
    for step in memos:  # in the order they were stored
        if step == chosen:
            break
        kept.append(step)
    # Queued, not taken at once: a run taken in its own unit is called with no memos read.
    queued = dataclasses.replace(unit, capacity=None)
    new = await lifecycle.start_run(queued, fn, run.events)
    last = {h.step: h for h in history if h.ended_at is not None}
    now = now_ms()
    copies = [(step, memos[step]) for step in kept]
    if output is not NO_OUTPUT:
        copies.append((chosen, {"data": output}))
    for step, memo in copies:
        await unit.tx.put_memo(new, step, memo)
        old = last.get(step)
        name = old.name if old is not None else step
        op = old.op if old is not None else "StepRun"
        value = memo.get("data") if isinstance(memo, dict) else memo
        error = memo.get("error") if isinstance(memo, dict) else None
        await unit.tx.add_history(HistoryRecord(new, step, name, op, 0, now, now, value, error))
    return new
