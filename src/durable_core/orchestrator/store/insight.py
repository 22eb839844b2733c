"""Reads for the dashboard: what a run waits for, the runs it invoked, and a function's recent
runs. Every query goes through an index (`waits`, `signals` and `queue` by run, `runs` by
parent and by function), so a page stays fast however many runs the store holds."""

from __future__ import annotations

import dataclasses
from typing import Any

from .interface import Tx
from .records import ItemKind, load
from .sql import SqlTx

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
    """What the run waits for: events (with their expression), signals, and timers."""
    db = _sql(tx).db
    out: list[dict[str, Any]] = []
    for r in await db.rows(
        "SELECT step, event_name, expression, expires_at FROM waits WHERE run_id=?", (run_id,)
    ):
        out.append({"kind": "event", "step": r["step"], "event": r["event_name"],
                    "expression": r["expression"], "until": int(r["expires_at"])})  # fmt: skip
    for r in await db.rows("SELECT signal, step FROM signals WHERE run_id=?", (run_id,)):
        out.append({"kind": "signal", "step": r["step"], "signal": r["signal"]})
    rows = await db.rows(
        "SELECT kind, step, available_at, payload FROM queue WHERE run_id=? AND kind IN (?,?)",
        (run_id, ItemKind.RESUME.value, ItemKind.TIMEOUT.value),
    )
    for r in rows:
        kind = "timeout" if r["kind"] == ItemKind.TIMEOUT.value else "timer"
        payload = load(r["payload"]) or {}
        out.append({"kind": kind, "step": r["step"], "until": int(r["available_at"]),
                    "resumes_with": "timeout" if payload.get("memo") is None else "result"})  # fmt: skip
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
