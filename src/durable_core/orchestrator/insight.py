"""Reads for the dashboard: what a run waits for, the runs it invoked, and a function's recent
runs. Every query goes through an index (`waits`, `signals` and `queue` by run, `runs` by
parent and by function), so a page stays fast however many runs the store holds."""

from __future__ import annotations

import dataclasses
from typing import Any

from . import timeouts
from .store import ItemKind, Tx
from .store.sql import SqlTx

__all__ = ["RecentRun", "children", "recent_runs", "waiting_on"]


@dataclasses.dataclass(slots=True)
class RecentRun:
    status: str
    created_at: int
    ended_at: int | None


def _sql(tx: Tx) -> SqlTx:
    assert isinstance(tx, SqlTx), "the dashboard reads a SQL store"
    return tx


async def waiting_on(tx: Tx, run_id: str) -> list[dict[str, Any]]:
    """What the run waits for: events (with their expression) and signals, each until its
    timeout; sleeps; its own timeouts; and the events that would cancel it."""
    db = _sql(tx).db
    rows = await db.rows(
        "SELECT kind, step, available_at FROM queue WHERE run_id=? AND kind IN (?,?)",
        (run_id, ItemKind.RESUME.value, ItemKind.TIMEOUT.value),
    )
    timers = {r["step"]: int(r["available_at"]) for r in rows if r["kind"] == ItemKind.RESUME}
    out: list[dict[str, Any]] = [
        {"kind": "timeout", "until": int(r["available_at"])}
        for r in rows
        if r["kind"] == ItemKind.TIMEOUT
    ]
    waits = await db.rows(
        "SELECT step, event_name, expression, expires_at FROM waits WHERE run_id=?", (run_id,)
    )
    for r in waits:
        kind = "cancel_on" if r["step"].startswith(timeouts.CANCEL_STEP) else "event"
        timers.pop(r["step"], None)
        out.append({"kind": kind, "step": r["step"], "event": r["event_name"],
                    "expression": r["expression"], "until": int(r["expires_at"])})  # fmt: skip
    for r in await db.rows("SELECT signal, step FROM signals WHERE run_id=?", (run_id,)):
        until = timers.pop(r["step"], None)
        out.append({"kind": "signal", "step": r["step"], "signal": r["signal"], "until": until})
    out += [{"kind": "sleep", "step": step, "until": at} for step, at in timers.items()]
    return out


async def children(tx: Tx, run_id: str, limit: int = 100) -> list[dict[str, Any]]:
    """The runs `run_id` invoked, oldest first."""
    rows = await _sql(tx).db.rows(
        "SELECT run_id, fn_id, status, parent_step FROM runs WHERE parent_run_id=?"
        " ORDER BY created_at LIMIT ?",
        (run_id, limit),
    )
    return [
        {"run_id": r["run_id"], "function_id": r["fn_id"], "status": r["status"],
         "step": r["parent_step"]}
        for r in rows
    ]  # fmt: skip


async def recent_runs(tx: Tx, fn_id: str, limit: int) -> list[RecentRun]:
    """The function's last `limit` runs, newest first."""
    rows = await _sql(tx).db.rows(
        "SELECT status, created_at, ended_at FROM runs WHERE fn_id=?"
        " ORDER BY created_at DESC LIMIT ?",
        (fn_id, limit),
    )
    return [RecentRun(r["status"], int(r["created_at"]), r["ended_at"]) for r in rows]
